<#
.SYNOPSIS
    Reports why Remote Desktop may fail with error 0x904 on this machine. Read-only: changes nothing.

.DESCRIPTION
    Reads the RDP listener's certificate (Win32_TSGeneralSetting.SSLCertificateSHA1Hash), the store holding it,
    its dates and whether its private key is usable; the MachineKeys folder and the listener key container ACLs;
    the TermService, SessionEnv and UmRdpService services; fDenyTSConnections, PortNumber, SecurityLayer and
    UserAuthentication (a Group Policy value wins over the local one); server-side TLS 1.2 in SCHANNEL; per
    profile, whether the "Remote Desktop - User Mode (TCP-In)" firewall rule is in effect; whether anything
    listens on the RDP port; events 1057, 1058 (TerminalServices-RemoteConnectionManager), 36870 and 36871
    (Schannel) of the last 24 hours; and the remote sessions. Each check runs on its own: one that fails is
    reported in errors and the others still run. Ends with the repairs the findings call for, in the order to
    apply them; a check that failed recommends nothing.

.PARAMETER DetectOnly
    'true' or 'false' (text: Run Command passes every parameter as a string). Accepted like every rdp-remediate
    script; this one never changes anything either way.

.PARAMETER ExpiryWarningDays
    A certificate that expires within this many days is recommended for renewal. Default 30.

.OUTPUTS
    Progress lines, then one compact JSON line: the rdp-remediate guest summary (contract.schema.json).
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false',

    [ValidateRange(0, 3650)]
    [int]$ExpiryWarningDays = 30
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'diagnose'
$ScriptVersion = '1.1.0'

$MachineKeysPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto\RSA\MachineKeys'
$TerminalServerKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server'
$RdpTcpKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server\WinStations\RDP-Tcp'
# Group Policy's Remote Desktop settings: when a value is set here, it is the one in effect.
$RdpPolicyKey = 'HKLM:\SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services'
$RdStore = 'Cert:\LocalMachine\Remote Desktop'
$Tls12ServerKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols\TLS 1.2\Server'
# The built-in rule "Remote Desktop - User Mode (TCP-In)" by its Name, which is not localized. Every connection
# starts over TCP (UDP only accelerates one), so this rule decides whether RDP gets through; the group's other
# rules (the UDP one, Shadow) do not.
$RdpTcpRule = 'RemoteDesktop-UserMode-In-TCP'
# Windows' default rights: Administrators own the folder; SYSTEM owns the listener's key, NETWORK SERVICE reads it.
$FolderRights = @{ 'S-1-5-32-544' = 'FullControl' }
$ContainerRights = @{ 'S-1-5-18' = 'FullControl'; 'S-1-5-20' = 'Read' }

function Write-Step {
    # Progress for the Run Command output. Write-Host, not Write-Output, so that progress never becomes part of
    # a function's return value.
    param([string]$Message)
    Write-Host ('[{0}] {1}' -f $ScriptName, $Message)
}

function Add-Text {
    # One entry of a summary list, clipped to the contract's 300 characters.
    param([System.Collections.Generic.List[string]]$List, [string]$Text)
    if ($Text.Length -gt 300) {
        $Text = $Text.Substring(0, 297) + '...'
    }
    $List.Add($Text)
}

function Write-Summary {
    # The contract: one compact JSON object as the last line of output. Run Command keeps only the last 4096
    # bytes, so the line stays within 4000: lists are cut to 20 entries, then actions (before errors) are
    # dropped until it fits, and `truncated` counts what was dropped.
    param([System.Collections.IDictionary]$Summary)
    $dropped = 0
    foreach ($name in @('actions', 'errors')) {
        while ($Summary[$name].Count -gt 20) {
            $Summary[$name].RemoveAt(20)
            $dropped++
        }
    }
    while ($true) {
        if ($dropped -gt 0) {
            $Summary['truncated'] = $dropped
        }
        $json = ConvertTo-Json -InputObject $Summary -Compress -Depth 8
        if ([System.Text.Encoding]::UTF8.GetByteCount($json) -le 4000) {
            break
        }
        $list = $Summary['actions']
        if ($list.Count -eq 0) {
            $list = $Summary['errors']
        }
        if ($list.Count -eq 0) {
            break
        }
        $list.RemoveAt($list.Count - 1)
        $dropped++
    }
    Write-Output $json
}

function Format-UtcTime {
    # ISO 8601 in UTC whatever the machine's culture (ConvertTo-Json would write "\/Date(...)\/").
    param([datetime]$Time)
    $Time.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", [System.Globalization.CultureInfo]::InvariantCulture)
}

function Get-RegistryValue {
    # A registry value, or $Default when the key or the value does not exist.
    param([string]$Path, [string]$Name, [object]$Default)
    $item = Get-ItemProperty -LiteralPath $Path -Name $Name -ErrorAction SilentlyContinue
    if ($null -eq $item) {
        return $Default
    }
    $item.$Name
}

function Get-ListenerThumbprint {
    # The certificate the RDP listener uses, as Windows reports it; $null when it reports none.
    $setting = Get-CimInstance -Namespace 'root\cimv2\TerminalServices' -ClassName 'Win32_TSGeneralSetting' -Filter "TerminalName='RDP-tcp'"
    if ($null -eq $setting -or -not $setting.SSLCertificateSHA1Hash -or $setting.SSLCertificateSHA1Hash -match '^0+$') {
        return $null
    }
    ([string]$setting.SSLCertificateSHA1Hash).ToUpperInvariant()
}

function Find-Certificate {
    # The certificate with this thumbprint in the machine stores a listener certificate comes from, or $null.
    param([string]$Thumbprint)
    foreach ($store in @('Cert:\LocalMachine\Remote Desktop', 'Cert:\LocalMachine\My')) {
        $path = Join-Path -Path $store -ChildPath $Thumbprint
        if (Test-Path -LiteralPath $path) {
            return @{ Certificate = (Get-Item -LiteralPath $path); Store = $store }
        }
    }
    $null
}

function Get-ListenerKeyContainerPath {
    # The self-signed listener certificate's key is the TSSecKeySet1 container: in MachineKeys, a file named after
    # a fixed hash of that name and the machine GUID.
    $guid = Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\Cryptography' -Name 'MachineGuid' -Default ''
    if (-not $guid) {
        return $null
    }
    Join-Path -Path $MachineKeysPath -ChildPath ('f686aace6942fb7f7ceb231212eef4a4_' + $guid)
}

function Get-PrivateKeyState {
    # 'ok' when the key opens; 'missing' when the certificate has none or its key file is gone; 'unreadable'
    # otherwise (what events 1057 "Keyset does not exist" and 36870 report).
    param([System.Security.Cryptography.X509Certificates.X509Certificate2]$Certificate, [string]$ContainerPath)
    if (-not $Certificate.HasPrivateKey) {
        return 'missing'
    }
    try {
        $key = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPrivateKey($Certificate)
        if ($null -eq $key) {
            $key = [System.Security.Cryptography.X509Certificates.ECDsaCertificateExtensions]::GetECDsaPrivateKey($Certificate)
        }
        if ($null -ne $key) {
            $key.Dispose()
            return 'ok'
        }
    }
    catch {
        Write-Step ('the private key of {0} does not open: {1}' -f $Certificate.Thumbprint, $_.Exception.Message)
    }
    if ($ContainerPath -and -not (Test-Path -LiteralPath $ContainerPath)) {
        return 'missing'
    }
    'unreadable'
}

function Get-CertificateInfo {
    # The contract's view of the listener certificate; $Found is what Find-Certificate returned.
    param([string]$Thumbprint, [object]$Found, [datetime]$Now)
    if ($null -eq $Found) {
        return [ordered]@{ thumbprint = $Thumbprint; store = $null; not_before = $null; not_after = $null; expired = $null; self_signed = $null; private_key = 'missing' }
    }
    $certificate = $Found.Certificate
    $selfSigned = $certificate.Subject -eq $certificate.Issuer
    $container = ''
    if ($selfSigned -and $Found.Store -eq 'Cert:\LocalMachine\Remote Desktop') {
        $container = Get-ListenerKeyContainerPath
    }
    [ordered]@{
        thumbprint  = $certificate.Thumbprint.ToUpperInvariant()
        store       = $Found.Store
        not_before  = Format-UtcTime -Time $certificate.NotBefore
        not_after   = Format-UtcTime -Time $certificate.NotAfter
        expired     = $certificate.NotAfter -le $Now
        self_signed = $selfSigned
        private_key = Get-PrivateKeyState -Certificate $certificate -ContainerPath $container
    }
}

function Test-AclGrants {
    # True when each SID in $Required is allowed at least the given rights and is denied nothing. An ACL this
    # account may not even read is not right either: it is the typical broken key container (no entry for
    # SYSTEM, another owner), and reading it must not stop the script.
    param([string]$Path, [hashtable]$Required)
    try {
        $acl = Get-Acl -LiteralPath $Path
    }
    catch [System.UnauthorizedAccessException] {
        Write-Step ('the ACL of {0} is unreadable: {1}' -f $Path, $_.Exception.Message)
        return $false
    }
    $rules = $acl.GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier])
    foreach ($sid in $Required.Keys) {
        $needed = [int][System.Security.AccessControl.FileSystemRights]$Required[$sid]
        $allowed = 0
        foreach ($rule in $rules) {
            # An inherit-only entry is for the children, not for this file or folder.
            if ($rule.IdentityReference.Value -ne $sid -or $rule.PropagationFlags.HasFlag([System.Security.AccessControl.PropagationFlags]::InheritOnly)) {
                continue
            }
            if ($rule.AccessControlType -eq 'Deny') {
                return $false
            }
            $allowed = $allowed -bor (Get-FileRights -Mask ([int]$rule.FileSystemRights))
        }
        if (($allowed -band $needed) -ne $needed) {
            return $false
        }
    }
    $true
}

function Get-FileRights {
    # An entry's access mask as file rights. An entry may hold generic rights, which share no bit with the file
    # rights they stand for: GENERIC_ALL (0x10000000) means FullControl, GENERIC_READ (0x80000000) means Read.
    param([int]$Mask)
    if ($Mask -band 0x10000000) {
        $Mask = $Mask -bor [int][System.Security.AccessControl.FileSystemRights]::FullControl
    }
    if ($Mask -band 0x80000000) {
        $Mask = $Mask -bor [int][System.Security.AccessControl.FileSystemRights]::Read
    }
    $Mask
}

function Get-ServiceInfo {
    # State and start type of a service, from WMI (Get-Service lacks the start type on older .NET).
    param([string]$Name)
    $service = Get-CimInstance -ClassName 'Win32_Service' -Filter ("Name='{0}'" -f $Name)
    if ($null -eq $service) {
        return [ordered]@{ state = 'NotFound'; start_type = 'NotFound' }
    }
    [ordered]@{ state = [string]$service.State; start_type = [string]$service.StartMode }
}

function Get-RdpSetting {
    # A Remote Desktop setting as it is in effect: the Group Policy value when one is set, else the local one.
    param([string]$Path, [string]$Name, [int]$Default)
    $value = Get-RegistryValue -Path $RdpPolicyKey -Name $Name -Default $null
    if ($null -eq $value) {
        $value = Get-RegistryValue -Path $Path -Name $Name -Default $Default
    }
    [int]$value
}

function Test-Tls12ServerEnabled {
    # SCHANNEL's TLS 1.2 server side is on unless its registry key turns it off.
    $enabled = Get-RegistryValue -Path $Tls12ServerKey -Name 'Enabled' -Default 1
    $disabledByDefault = Get-RegistryValue -Path $Tls12ServerKey -Name 'DisabledByDefault' -Default 0
    ($enabled -ne 0) -and ($disabledByDefault -eq 0)
}

function Get-RdpRuleProfileState {
    # Per firewall profile: is the User Mode TCP-In rule enabled and in effect for it? The active store merges
    # local and Group Policy rules, so a policy that disables the rule counts.
    $state = [ordered]@{ Domain = $false; Private = $false; Public = $false }
    $rules = @(Get-NetFirewallRule -PolicyStore ActiveStore -Name $RdpTcpRule -ErrorAction SilentlyContinue)
    foreach ($rule in $rules) {
        if ([string]$rule.Enabled -ne 'True') {
            continue
        }
        $scope = [string]$rule.Profile
        foreach ($name in @('Domain', 'Private', 'Public')) {
            if ($scope -eq 'Any' -or $scope -like ('*' + $name + '*')) {
                $state[$name] = $true
            }
        }
    }
    $state
}

function Get-RecentEventCount {
    # How often the System log recorded this event since $Since; none is not an error.
    param([string]$Provider, [int]$Id, [datetime]$Since)
    $filter = @{ LogName = 'System'; ProviderName = $Provider; Id = $Id; StartTime = $Since }
    @(Get-WinEvent -FilterHashtable $filter -ErrorAction SilentlyContinue).Count
}

function Get-RdpSessionCount {
    # Remote Desktop logon sessions (LogonType 10) that still own processes, connected or disconnected:
    # restarting TermService ends them all.
    $count = 0
    foreach ($session in @(Get-CimInstance -ClassName 'Win32_LogonSession' -Filter 'LogonType = 10')) {
        $processes = @()
        try {
            $processes = @(Get-CimAssociatedInstance -InputObject $session -ResultClassName 'Win32_Process')
        }
        catch {
            # The session ended between the two queries: it no longer counts.
            Write-Step ('logon session {0} is gone: {1}' -f $session.LogonId, $_.Exception.Message)
        }
        if ($processes.Count -gt 0) {
            $count++
        }
    }
    $count
}

function Format-ErrorText {
    # An error for the summary, with its script line when PowerShell knows it. InvocationInfo can be $null, and
    # under strict mode reading a member of $null throws: inside a catch that would cost the summary.
    param([System.Management.Automation.ErrorRecord]$Record)
    $line = 0
    if ($null -ne $Record.InvocationInfo) {
        $line = $Record.InvocationInfo.ScriptLineNumber
    }
    if ($line -gt 0) {
        return ('{0} (line {1})' -f $Record.Exception.Message, $line)
    }
    $Record.Exception.Message
}

function Add-CheckError {
    # A check that failed: its error goes to the summary and its name to $Failed, so that the other checks still
    # run and nothing is recommended on the strength of a finding that was never read.
    param([string]$Check, [System.Management.Automation.ErrorRecord]$Record, [System.Collections.Generic.List[string]]$Failed, [System.Collections.Generic.List[string]]$Errors)
    $Failed.Add($Check)
    Add-Text -List $Errors -Text ('{0}: {1}' -f $Check, (Format-ErrorText -Record $Record))
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    actions         = [System.Collections.Generic.List[string]]::new()
    findings        = [ordered]@{
        os_build             = ''
        listener_certificate = $null
        machinekeys          = [ordered]@{ folder_exists = $false; folder_acl_ok = $false; key_container = $null; key_container_acl_ok = $null }
        services             = [ordered]@{
            TermService  = [ordered]@{ state = 'Unknown'; start_type = 'Unknown' }
            SessionEnv   = [ordered]@{ state = 'Unknown'; start_type = 'Unknown' }
            UmRdpService = [ordered]@{ state = 'Unknown'; start_type = 'Unknown' }
        }
        rdp_config           = [ordered]@{ deny_connections = $false; port = 3389; security_layer = 2; user_authentication = 1 }
        tls12_server_enabled = $false
        firewall_rule_group  = [ordered]@{ Domain = $false; Private = $false; Public = $false }
        listening            = $false
        events_24h           = [ordered]@{ '1057' = 0; '1058' = 0; '36870' = 0; '36871' = 0 }
        active_sessions      = 0
        recommended          = [System.Collections.Generic.List[string]]::new()
    }
    errors          = [System.Collections.Generic.List[string]]::new()
}

# Each check has its own try/catch, named after the finding it fills: one that fails (access denied, WMI not
# answering) is reported and the next one still runs.
$now = Get-Date
$findings = $summary.findings
$failed = [System.Collections.Generic.List[string]]::new()
$certificate = $null
Write-Step ('{0} on {1}, read-only' -f $ScriptVersion, $env:COMPUTERNAME)

try {
    $os = Get-CimInstance -ClassName 'Win32_OperatingSystem'
    $revision = Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion' -Name 'UBR' -Default 0
    $findings.os_build = '{0}.{1}' -f $os.Version, $revision
}
catch {
    Add-CheckError -Check 'os_build' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'listener certificate'
    $thumbprint = Get-ListenerThumbprint
    if ($thumbprint) {
        $found = Find-Certificate -Thumbprint $thumbprint
        $findings.listener_certificate = Get-CertificateInfo -Thumbprint $thumbprint -Found $found -Now $now
        if ($null -ne $found) {
            $certificate = $found.Certificate
        }
    }
}
catch {
    Add-CheckError -Check 'listener_certificate' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'machine key store'
    $findings.machinekeys.folder_exists = Test-Path -LiteralPath $MachineKeysPath
    if ($findings.machinekeys.folder_exists) {
        $findings.machinekeys.folder_acl_ok = Test-AclGrants -Path $MachineKeysPath -Required $FolderRights
    }
    $container = Get-ListenerKeyContainerPath
    if ($container -and (Test-Path -LiteralPath $container)) {
        $findings.machinekeys.key_container = Split-Path -Path $container -Leaf
        $findings.machinekeys.key_container_acl_ok = Test-AclGrants -Path $container -Required $ContainerRights
    }
}
catch {
    Add-CheckError -Check 'machinekeys' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'services'
    foreach ($name in @('TermService', 'SessionEnv', 'UmRdpService')) {
        $findings.services[$name] = Get-ServiceInfo -Name $name
    }
}
catch {
    Add-CheckError -Check 'services' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'listener settings'
    $findings.rdp_config.deny_connections = (Get-RdpSetting -Path $TerminalServerKey -Name 'fDenyTSConnections' -Default 0) -ne 0
    $findings.rdp_config.port = [int](Get-RegistryValue -Path $RdpTcpKey -Name 'PortNumber' -Default 3389)
    $findings.rdp_config.security_layer = Get-RdpSetting -Path $RdpTcpKey -Name 'SecurityLayer' -Default 2
    $findings.rdp_config.user_authentication = Get-RdpSetting -Path $RdpTcpKey -Name 'UserAuthentication' -Default 1
}
catch {
    Add-CheckError -Check 'rdp_config' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    $findings.tls12_server_enabled = Test-Tls12ServerEnabled
}
catch {
    Add-CheckError -Check 'tls12_server_enabled' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'firewall'
    $findings.firewall_rule_group = Get-RdpRuleProfileState
}
catch {
    Add-CheckError -Check 'firewall_rule_group' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    $findings.listening = @(Get-NetTCPConnection -State Listen -LocalPort $findings.rdp_config.port -ErrorAction SilentlyContinue).Count -gt 0
}
catch {
    Add-CheckError -Check 'listening' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'events of the last 24 hours'
    $since = $now.AddHours(-24)
    foreach ($id in @(1057, 1058)) {
        $findings.events_24h[[string]$id] = Get-RecentEventCount -Provider 'Microsoft-Windows-TerminalServices-RemoteConnectionManager' -Id $id -Since $since
    }
    foreach ($id in @(36870, 36871)) {
        $findings.events_24h[[string]$id] = Get-RecentEventCount -Provider 'Schannel' -Id $id -Since $since
    }
}
catch {
    Add-CheckError -Check 'events_24h' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    Write-Step 'sessions'
    $findings.active_sessions = Get-RdpSessionCount
}
catch {
    Add-CheckError -Check 'active_sessions' -Record $_ -Failed $failed -Errors $summary.errors
}

try {
    # The key store first (a certificate cannot be renewed without it), then the certificate, firewall, TLS;
    # only from checks that succeeded (a failed one keeps defaults that mean nothing).
    $keys = $findings.machinekeys
    $cert = $findings.listener_certificate
    $recommended = $findings.recommended
    if ($failed -notcontains 'machinekeys') {
        if (-not $keys.folder_exists) {
            $recommended.Add('reset-machinekeys')
        }
        elseif (-not $keys.folder_acl_ok -or $keys.key_container_acl_ok -eq $false) {
            $recommended.Add('repair-machinekeys')
        }
        elseif ($null -ne $cert -and $cert.private_key -eq 'unreadable') {
            # The permissions are right and the key still does not open: the store is corrupt.
            $recommended.Add('reset-machinekeys')
        }
    }
    if ($failed -notcontains 'listener_certificate') {
        # renew-certificate replaces only the self-signed certificates of the Remote Desktop store, and clears a
        # pin to an expired or vanished certificate: recommend it only for what it repairs.
        $ownCertificate = $null -ne $cert -and $cert.self_signed -eq $true -and $cert.store -eq $RdStore
        $expiresSoon = $null -ne $certificate -and $certificate.NotAfter -le $now.AddDays($ExpiryWarningDays)
        if ($null -eq $cert -or $cert.expired -ne $false -or ($ownCertificate -and ($cert.private_key -ne 'ok' -or $expiresSoon))) {
            $recommended.Add('renew-certificate')
        }
    }
    if ($failed -notcontains 'firewall_rule_group' -and $findings.firewall_rule_group.Values -contains $false) {
        $recommended.Add('enable-firewall-rule')
    }
    if ($failed -notcontains 'tls12_server_enabled' -and -not $findings.tls12_server_enabled) {
        $recommended.Add('enable-tls12')
    }
    if ($recommended.Count -eq 0) {
        Add-Text -List $summary.actions -Text 'read the state; no repair needed'
    }
    else {
        Add-Text -List $summary.actions -Text ('read the state; recommended: {0}' -f ($recommended -join ', '))
    }
}
catch {
    Add-CheckError -Check 'recommended' -Record $_ -Failed $failed -Errors $summary.errors
}
Write-Summary -Summary $summary
