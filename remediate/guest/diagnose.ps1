<#
.SYNOPSIS
    Reports why Remote Desktop may fail with error 0x904 on this machine. Read-only: changes nothing.

.DESCRIPTION
    Reads the RDP listener's certificate (Win32_TSGeneralSetting.SSLCertificateSHA1Hash), the store holding it,
    its dates and whether its private key is usable; the MachineKeys folder and the listener key container ACLs;
    the TermService, SessionEnv and UmRdpService services; fDenyTSConnections, PortNumber, SecurityLayer and
    UserAuthentication; server-side TLS 1.2 in SCHANNEL; the "Remote Desktop" firewall rule group per profile;
    whether anything listens on the RDP port; events 1057, 1058 (TerminalServices-RemoteConnectionManager),
    36870 and 36871 (Schannel) of the last 24 hours; and the remote sessions. Ends with the repairs the findings
    call for, in the order to apply them.

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
$ScriptVersion = '1.0.0'

$MachineKeysPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto\RSA\MachineKeys'
$TerminalServerKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server'
$RdpTcpKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server\WinStations\RDP-Tcp'
$Tls12ServerKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols\TLS 1.2\Server'
# The built-in "Remote Desktop" rule group by its resource string: the display name is localized.
$RdpRuleGroup = '@FirewallAPI.dll,-28752'
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
    # True when each SID in $Required is allowed at least the given rights and is denied nothing.
    param([string]$Path, [hashtable]$Required)
    $rules = (Get-Acl -LiteralPath $Path).GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier])
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
            $allowed = $allowed -bor [int]$rule.FileSystemRights
        }
        if (($allowed -band $needed) -ne $needed) {
            return $false
        }
    }
    $true
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

function Test-Tls12ServerEnabled {
    # SCHANNEL's TLS 1.2 server side is on unless its registry key turns it off.
    $enabled = Get-RegistryValue -Path $Tls12ServerKey -Name 'Enabled' -Default 1
    $disabledByDefault = Get-RegistryValue -Path $Tls12ServerKey -Name 'DisabledByDefault' -Default 0
    ($enabled -ne 0) -and ($disabledByDefault -eq 0)
}

function Get-RdpRuleProfileState {
    # Per firewall profile: is an enabled inbound rule of the "Remote Desktop" group in effect for it?
    $state = [ordered]@{ Domain = $false; Private = $false; Public = $false }
    $rules = @(Get-NetFirewallRule -PolicyStore ActiveStore -Group $RdpRuleGroup -Direction Inbound -ErrorAction SilentlyContinue)
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
        $processes = @(Get-CimAssociatedInstance -InputObject $session -ResultClassName 'Win32_Process')
        if ($processes.Count -gt 0) {
            $count++
        }
    }
    $count
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

try {
    $now = Get-Date
    $findings = $summary.findings
    Write-Step ('{0} on {1}, read-only' -f $ScriptVersion, $env:COMPUTERNAME)

    $os = Get-CimInstance -ClassName 'Win32_OperatingSystem'
    $revision = Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion' -Name 'UBR' -Default 0
    $findings.os_build = '{0}.{1}' -f $os.Version, $revision

    Write-Step 'listener certificate'
    $certificate = $null
    $thumbprint = Get-ListenerThumbprint
    if ($thumbprint) {
        $found = Find-Certificate -Thumbprint $thumbprint
        $findings.listener_certificate = Get-CertificateInfo -Thumbprint $thumbprint -Found $found -Now $now
        if ($null -ne $found) {
            $certificate = $found.Certificate
        }
    }

    Write-Step 'machine key store'
    $keys = $findings.machinekeys
    $keys.folder_exists = Test-Path -LiteralPath $MachineKeysPath
    if ($keys.folder_exists) {
        $keys.folder_acl_ok = Test-AclGrants -Path $MachineKeysPath -Required $FolderRights
    }
    $container = Get-ListenerKeyContainerPath
    if ($container -and (Test-Path -LiteralPath $container)) {
        $keys.key_container = Split-Path -Path $container -Leaf
        $keys.key_container_acl_ok = Test-AclGrants -Path $container -Required $ContainerRights
    }

    Write-Step 'services and listener settings'
    foreach ($name in @('TermService', 'SessionEnv', 'UmRdpService')) {
        $findings.services[$name] = Get-ServiceInfo -Name $name
    }
    $rdp = $findings.rdp_config
    $rdp.deny_connections = (Get-RegistryValue -Path $TerminalServerKey -Name 'fDenyTSConnections' -Default 0) -ne 0
    $rdp.port = [int](Get-RegistryValue -Path $RdpTcpKey -Name 'PortNumber' -Default 3389)
    $rdp.security_layer = [int](Get-RegistryValue -Path $RdpTcpKey -Name 'SecurityLayer' -Default 2)
    $rdp.user_authentication = [int](Get-RegistryValue -Path $RdpTcpKey -Name 'UserAuthentication' -Default 1)
    $findings.tls12_server_enabled = Test-Tls12ServerEnabled
    $findings.firewall_rule_group = Get-RdpRuleProfileState
    $findings.listening = @(Get-NetTCPConnection -State Listen -LocalPort $rdp.port -ErrorAction SilentlyContinue).Count -gt 0

    Write-Step 'events of the last 24 hours and sessions'
    $since = $now.AddHours(-24)
    foreach ($id in @(1057, 1058)) {
        $findings.events_24h[[string]$id] = Get-RecentEventCount -Provider 'Microsoft-Windows-TerminalServices-RemoteConnectionManager' -Id $id -Since $since
    }
    foreach ($id in @(36870, 36871)) {
        $findings.events_24h[[string]$id] = Get-RecentEventCount -Provider 'Schannel' -Id $id -Since $since
    }
    $findings.active_sessions = Get-RdpSessionCount

    # The key store first (a certificate cannot be renewed without it), then the certificate, firewall, TLS.
    $cert = $findings.listener_certificate
    $recommended = $findings.recommended
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
    $expiresSoon = $null -ne $certificate -and $certificate.NotAfter -le $now.AddDays($ExpiryWarningDays)
    if ($null -eq $cert -or $cert.expired -ne $false -or $cert.private_key -ne 'ok' -or $expiresSoon) {
        $recommended.Add('renew-certificate')
    }
    if ($findings.firewall_rule_group.Values -contains $false) {
        $recommended.Add('enable-firewall-rule')
    }
    if (-not $findings.tls12_server_enabled) {
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
    Add-Text -List $summary.errors -Text ('{0} (line {1})' -f $_.Exception.Message, $_.InvocationInfo.ScriptLineNumber)
}
Write-Summary -Summary $summary
