<#
.SYNOPSIS
    Reports the facts behind Remote Desktop error 0x904 on this machine. Read-only: changes nothing and
    recommends nothing (the engine decides).

.DESCRIPTION
    Reads, each under its own guard and time limit: the OS build and .NET Framework release; the listener's port
    and security settings; the listener's certificate (Win32_TSGeneralSetting.SSLCertificateSHA1Hash and
    SSLCertificateSHA1HashType: 1 Windows' own self-signed, 2 Group Policy template, 3 custom), the store holding
    it, its dates, subject and issuer, where its pin is set, and valid successors for a custom one; its private
    key: provider (CSP or CNG), container, key file, whether SYSTEM and NETWORK SERVICE may read it (TermService
    reads it as NETWORK SERVICE, KB 2001849) and the deny entries that stop them; the MachineKeys folder's ACL
    and the newest rdp-remediate backup of it; the other LocalMachine certificates whose keys live in
    MachineKeys; server roles; the firewall profiles, the enabled inbound allow rules for the listener's port on
    the active profile, the built-in rule and its Group Policy copies; what listens on the port; remote sessions
    (logon types 10 and 12); server-side TLS 1.2 and 1.3; events 1057, 1058, 36870, 36871 of the last 24 hours; the clock's offset from
    its time source; the listener's adapter binding (LanAdapter) and MinEncryptionLevel; FIPS mode and the cipher
    suite policy; failed logons (4625) of the last hour by logon type 10 and 3.
    A check that fails or times out leaves its fact null (unknown) and names itself in errors; the others run.

.PARAMETER DetectOnly
    'true' or 'false' (text: Run Command passes every parameter as a string). Accepted like every rdp-remediate
    script; this one never changes anything either way.

.OUTPUTS
    Progress lines, then one compact ASCII JSON line: the rdp-remediate guest summary (contract.schema.json).
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'diagnose'
$ScriptVersion = '2.1.0'

$CimTimeoutSeconds = 20
$CryptoPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto'
$MachineKeysPath = Join-Path -Path $CryptoPath -ChildPath 'RSA\MachineKeys'
$CngKeysPath = Join-Path -Path $CryptoPath -ChildPath 'Keys'
$TerminalServerKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server'
$RdpTcpKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server\WinStations\RDP-Tcp'
# Group Policy's Remote Desktop settings: when a value is set here, it is the one in effect.
$RdpPolicyKey = 'HKLM:\SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services'
$SchannelKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\SecurityProviders\SCHANNEL\Protocols'
# The built-in rule "Remote Desktop - User Mode (TCP-In)" by its Name, which is not localized.
$RdpTcpRule = 'RemoteDesktop-UserMode-In-TCP'
# The groups in each account's token that an ACL entry can name (Microsoft Learn, "Well-known SIDs"): SYSTEM
# (also Everyone, Authenticated Users, Administrators) and NETWORK SERVICE (also Everyone, Authenticated Users,
# SERVICE).
# Both also hold BUILTIN\Users S-1-5-32-545 and LOCAL S-1-2-0; TermService's token holds its service SID
# NT SERVICE\TermService (Microsoft Learn, "Well-known SIDs", "Service SIDs").
$TokenSids = @{
    'S-1-5-18' = @('S-1-5-18', 'S-1-1-0', 'S-1-5-11', 'S-1-5-32-544', 'S-1-5-32-545', 'S-1-2-0')
    'S-1-5-20' = @('S-1-5-20', 'S-1-1-0', 'S-1-5-11', 'S-1-5-6', 'S-1-5-32-545', 'S-1-2-0', 'S-1-5-80-446051430-1559341753-4161941529-1950928533-810483104')
}
# Services whose presence names a server role that keeps keys in the machine store.
$RoleServices = @{ NTDS = 'domain-controller'; CertSvc = 'ad-cs'; W3SVC = 'iis'; TSGateway = 'rds-gateway'; Tssdis = 'rds-broker'; TermServLicensing = 'rds-licensing' }

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

function ConvertTo-AsciiJson {
    # Windows PowerShell 5.1 writes stdout in the OEM code page and ConvertTo-Json leaves non-ASCII characters as
    # they are: escape each as \uXXXX, which is the same JSON in pure ASCII.
    param([string]$Json)
    $builder = New-Object -TypeName System.Text.StringBuilder
    foreach ($character in $Json.ToCharArray()) {
        if ([int]$character -gt 126) {
            [void]$builder.AppendFormat('\u{0:x4}', [int]$character)
        }
        else {
            [void]$builder.Append($character)
        }
    }
    $builder.ToString()
}

function Write-Summary {
    # The contract: one compact ASCII JSON object as the last line of output. Run Command keeps only the last
    # 4096 bytes, so the line stays within 4000. The change record (actions) is kept first: lists are cut to 20
    # entries, then errors are dropped before actions until it fits, and `truncated` counts what was dropped.
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
        $json = ConvertTo-AsciiJson -Json (ConvertTo-Json -InputObject $Summary -Compress -Depth 8)
        if ($json.Length -le 4000) {
            break
        }
        $list = $Summary['errors']
        if ($list.Count -eq 0) {
            $list = $Summary['actions']
        }
        if ($list.Count -eq 0) {
            break
        }
        $list.RemoveAt($list.Count - 1)
        $dropped++
    }
    Write-Output $json
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

function Get-ListenerSetting {
    # The RDP listener's WMI settings (Win32_TSGeneralSetting), within the CIM time limit: a hung WMI provider
    # must not hold the VM's only Run Command slot.
    Get-CimInstance -Namespace 'root\cimv2\TerminalServices' -ClassName 'Win32_TSGeneralSetting' -Filter "TerminalName='RDP-tcp'" -OperationTimeoutSec $CimTimeoutSeconds
}

function Find-Certificate {
    # The certificate with this thumbprint in the LocalMachine stores a listener certificate comes from, or $null.
    param([string]$Thumbprint)
    foreach ($store in @('Cert:\LocalMachine\Remote Desktop', 'Cert:\LocalMachine\My')) {
        $path = Join-Path -Path $store -ChildPath $Thumbprint
        if (Test-Path -LiteralPath $path) {
            return @{ Certificate = (Get-Item -LiteralPath $path); Store = $store }
        }
    }
    $null
}

function Resolve-KeyFile {
    # Where a certificate's private key lives: CSP keys in Crypto\RSA\MachineKeys (the container's unique name is
    # the file name), CNG keys in Crypto\Keys (the key's unique name). Windows' own RDP key (TSSecKeySet1) is
    # known without opening it: f686aace6942fb7f7ceb231212eef4a4_<MachineGuid>. Another key must be opened to be
    # found; when it does not open, the file is unknown ($null), never guessed. On .NET Framework 4.6+
    # GetRSAPrivateKey returns RSACng even for a CSP key (dotnet/corefx#3502): the folder that holds the file
    # decides the provider, not the type .NET returns.
    param([System.Security.Cryptography.X509Certificates.X509Certificate2]$Certificate, [bool]$WindowsOwn)
    $result = @{ Provider = 'none'; Container = $null; File = $null; Path = $null }
    if (-not $Certificate.HasPrivateKey) {
        return $result
    }
    if ($WindowsOwn) {
        $guid = Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\Cryptography' -Name 'MachineGuid' -Default ''
        $result.Provider = 'csp'
        $result.Container = 'TSSecKeySet1'
        $result.File = 'f686aace6942fb7f7ceb231212eef4a4_' + $guid
        $result.Path = Join-Path -Path $MachineKeysPath -ChildPath $result.File
        return $result
    }
    $result.Provider = $null
    try {
        $key = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPrivateKey($Certificate)
        if ($key -is [System.Security.Cryptography.RSACng]) {
            $result.Provider = 'cng'
            $result.Container = $key.Key.KeyName
            $result.File = $key.Key.UniqueName
        }
        elseif ($key -is [System.Security.Cryptography.RSACryptoServiceProvider]) {
            $result.Provider = 'csp'
            $result.Container = $key.CspKeyContainerInfo.KeyContainerName
            $result.File = $key.CspKeyContainerInfo.UniqueKeyContainerName
        }
    }
    catch {
        Write-Step ('the key of {0} does not open as SYSTEM: {1}' -f $Certificate.Thumbprint, $_.Exception.Message)
    }
    if ($null -ne $result.File) {
        $inMachineKeys = Join-Path -Path $MachineKeysPath -ChildPath $result.File
        $inKeys = Join-Path -Path $CngKeysPath -ChildPath $result.File
        if (Test-Path -LiteralPath $inMachineKeys) {
            $result.Provider = 'csp'
            $result.Path = $inMachineKeys
        }
        elseif (Test-Path -LiteralPath $inKeys) {
            $result.Provider = 'cng'
            $result.Path = $inKeys
        }
        elseif ($result.Provider -eq 'csp') {
            $result.Path = $inMachineKeys
        }
        else {
            $result.Path = $inKeys
        }
    }
    $result
}

function Get-KeyAccess {
    # Whether SYSTEM and NETWORK SERVICE may read a key file, judged from its ACL as an access check would: a deny
    # entry for any group in the account's token wins over every allow entry; an allow entry for any of them
    # grants. $null values: the ACL could not be read (unknown, not broken).
    param([string]$Path)
    $access = @{ System = $null; NetworkService = $null; Denies = $null; Sddl = $null }
    try {
        $acl = Get-Acl -LiteralPath $Path
    }
    catch [System.UnauthorizedAccessException] {
        Write-Step ('the ACL of {0} is unreadable: {1}' -f $Path, $_.Exception.Message)
        return $access
    }
    $access.Sddl = Format-Clip -Text ([string]$acl.Sddl) -Length 128
    $rules = @($acl.GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier]))
    $read = [int][System.Security.AccessControl.FileSystemRights]::ReadData
    $denies = New-Object -TypeName 'System.Collections.Generic.List[string]'
    foreach ($account in @('S-1-5-18', 'S-1-5-20')) {
        $allowed = $false
        $denied = $false
        foreach ($rule in $rules) {
            $sid = $rule.IdentityReference.Value
            if ($TokenSids[$account] -notcontains $sid -or $rule.PropagationFlags.HasFlag([System.Security.AccessControl.PropagationFlags]::InheritOnly)) {
                continue
            }
            $mask = [int]$rule.FileSystemRights
            # Generic rights share no bit with the file rights they stand for: GENERIC_ALL, GENERIC_READ.
            $grantsRead = ($mask -band $read) -or ($mask -band 0x10000000) -or ($mask -band 0x80000000)
            if ($rule.AccessControlType -eq 'Deny' -and $grantsRead) {
                $denied = $true
                if (-not $denies.Contains($sid)) {
                    $denies.Add($sid)
                }
            }
            elseif ($rule.AccessControlType -eq 'Allow' -and $grantsRead) {
                $allowed = $true
            }
        }
        if ($account -eq 'S-1-5-18') {
            $access.System = $allowed -and -not $denied
        }
        else {
            $access.NetworkService = $allowed -and -not $denied
        }
    }
    $access.Denies = @($denies)
    $access
}

function Get-RdpSessionCount {
    # Remote Desktop logon sessions that still own processes, connected or disconnected: logon type 10
    # (RemoteInteractive) or 12 (CachedRemoteInteractive, RDP with cached credentials). Each CIM call is bounded.
    # Only a session that is gone (not found) stops counting; any other error, a time-out included, throws, so
    # the count is unknown rather than too low.
    param([int]$LogonType)
    $count = 0
    $sessions = @(Get-CimInstance -ClassName 'Win32_LogonSession' -Filter ('LogonType = {0}' -f $LogonType) -OperationTimeoutSec $CimTimeoutSeconds)
    foreach ($session in $sessions) {
        $processes = @()
        try {
            $processes = @(Get-CimAssociatedInstance -InputObject $session -ResultClassName 'Win32_Process' -OperationTimeoutSec $CimTimeoutSeconds)
        }
        catch [Microsoft.Management.Infrastructure.CimException] {
            if ([string]$_.Exception.NativeErrorCode -ne 'NotFound') {
                throw
            }
            Write-Step ('logon session {0} is gone: {1}' -f $session.LogonId, $_.Exception.Message)
        }
        if ($processes.Count -gt 0) {
            $count++
        }
    }
    $count
}

function Receive-Bounded {
    # The result of a job (a CDXML cmdlet run with -AsJob), or an error when it does not finish within the time
    # limit: the NetSecurity and NetTCPIP cmdlets take no -OperationTimeoutSec of their own.
    param([System.Management.Automation.Job]$Job)
    $finished = Wait-Job -Job $Job -Timeout $CimTimeoutSeconds
    if ($null -eq $finished) {
        Stop-Job -Job $Job
        Remove-Job -Job $Job -Force
        throw ('{0} did not answer within {1} s' -f $Job.Command, $CimTimeoutSeconds)
    }
    # "No matching objects" (a rule that does not exist, nothing listening) is an empty answer, not a failure.
    $jobErrors = @()
    $output = Receive-Job -Job $Job -ErrorAction SilentlyContinue -ErrorVariable jobErrors
    Remove-Job -Job $Job -Force
    $failures = @($jobErrors | Where-Object { [string]$_.CategoryInfo.Category -ne 'ObjectNotFound' })
    if ($failures.Count -gt 0) {
        throw $failures[0]
    }
    $output
}

function Format-Clip {
    # A text fact as the contract's safeText: characters JSON never escapes (any other becomes ?), clipped to its
    # contract length, so that its length is its size in the summary. [object], not [string]: a [string]
    # parameter turns $null into '' and the fact would read as known and empty.
    param([object]$Text, [int]$Length)
    if ($null -eq $Text) {
        return $null
    }
    $Text = ([string]$Text) -replace '[^A-Za-z0-9 .,:;=_()/@+#*?-]', '?'
    if ($Text.Length -gt $Length) {
        return $Text.Substring(0, $Length)
    }
    $Text
}

function Test-CrpCertificate {
    # The Azure agent's transport certificate for extensions' protected settings, by its issuer (not its
    # FriendlyName, which anyone can set): "DC=Windows Azure CRP Certificate Generator" (Microsoft Learn, "Azure
    # virtual machine extensions and features for Windows").
    param([System.Security.Cryptography.X509Certificates.X509Certificate2]$Certificate)
    [string]$Certificate.Issuer -like '*DC=Windows Azure CRP Certificate Generator*'
}

function Get-CrpKeyFile {
    # The key file of the Azure agent's CRP transport certificate in MachineKeys; $null when there is none.
    foreach ($certificate in @(Get-ChildItem -LiteralPath 'Cert:\LocalMachine\My' | Where-Object { $_.HasPrivateKey })) {
        if (Test-CrpCertificate -Certificate $certificate) {
            $key = Resolve-KeyFile -Certificate $certificate -WindowsOwn $false
            if ($key.Provider -eq 'csp') {
                return $key.File
            }
        }
    }
    $null
}

function Get-OtherKeys {
    # Every key file in MachineKeys but the listener's and the CRP transport key: what a whole-store rename would
    # set aside. Files are counted, not certificates, so key containers without a certificate (iisConfigurationKey,
    # NetFrameworkConfigurationKey, iisWasKey, WMSvc: Microsoft Learn, "Understanding Machine-Level and User-Level
    # RSA Key Containers") count too. A certificate's file is named after the certificate.
    param([string]$ListenerFile)
    $crp = Get-CrpKeyFile
    $labels = @{}
    foreach ($store in @(Get-ChildItem -LiteralPath 'Cert:\LocalMachine')) {
        foreach ($certificate in @(Get-ChildItem -LiteralPath $store.PSPath | Where-Object { $_.HasPrivateKey })) {
            $key = Resolve-KeyFile -Certificate $certificate -WindowsOwn $false
            if ($key.Provider -ne 'csp' -or $null -eq $key.File) {
                continue
            }
            $label = $certificate.FriendlyName
            if (-not $label) {
                $label = $certificate.GetNameInfo([System.Security.Cryptography.X509Certificates.X509NameType]::SimpleName, $false)
            }
            $labels[$key.File] = '{0} ({1})' -f $label, $store.Name
        }
    }
    $names = New-Object -TypeName 'System.Collections.Generic.List[string]'
    $count = 0
    $files = @()
    if (Test-Path -LiteralPath $MachineKeysPath) {
        # An unreadable folder throws: the count is then unknown, never zero.
        $files = @(Get-ChildItem -LiteralPath $MachineKeysPath -File -Force)
    }
    foreach ($file in $files) {
        if ($file.Name -eq $ListenerFile -or $file.Name -eq $crp) {
            continue
        }
        $count++
        if ($names.Count -lt 5) {
            $label = $labels[$file.Name]
            if (-not $label) {
                $label = $file.Name
            }
            $names.Add((Format-Clip -Text $label -Length 48))
        }
    }
    [ordered]@{ count = $count; names = @($names) }
}

function Add-CheckError {
    # A check that failed: its error goes to the summary, named after the fact it fills, which stays null
    # (unknown); the other checks still run.
    param([string]$Check, [System.Management.Automation.ErrorRecord]$Record, [System.Collections.Generic.List[string]]$Errors)
    Add-Text -List $Errors -Text ('{0}: {1}' -f $Check, (Format-ErrorText -Record $Record))
}

function Get-RdpSetting {
    # A Remote Desktop setting as it is in effect: the Group Policy value when one is set, else the local one;
    # reported as it is (a value outside the documented range is a fact too).
    param([string]$Path, [string]$Name, [int64]$Default, [switch]$LocalOnly)
    $value = $null
    if (-not $LocalOnly) {
        $value = Get-RegistryValue -Path $RdpPolicyKey -Name $Name -Default $null
    }
    if ($null -eq $value) {
        $value = Get-RegistryValue -Path $Path -Name $Name -Default $Default
    }
    # A REG_DWORD reads as a signed Int32 (0xFFFFFFFF is -1): report it as the unsigned value it is.
    $number = [int64]$value
    if ($number -lt 0) {
        $number += 4294967296
    }
    $number
}

function Get-ListenerFacts {
    # The pinned certificate and whose it is; $null when the listener reports none.
    param([datetime]$Now)
    $setting = Get-ListenerSetting
    if ($null -eq $setting) {
        # No RDP-tcp instance is not "no certificate": the fact is unknown.
        throw 'Win32_TSGeneralSetting has no RDP-tcp instance: the listener''s certificate is unknown'
    }
    if (-not $setting.SSLCertificateSHA1Hash -or $setting.SSLCertificateSHA1Hash -match '^0+$') {
        return $null
    }
    $thumbprint = ([string]$setting.SSLCertificateSHA1Hash).ToUpperInvariant()
    $pin = 'none'
    if ($null -ne (Get-RegistryValue -Path $RdpPolicyKey -Name 'SSLCertificateSHA1Hash' -Default $null) -or $null -ne (Get-RegistryValue -Path $RdpPolicyKey -Name 'CertTemplateName' -Default $null)) {
        $pin = 'policy'
    }
    elseif ($null -ne (Get-RegistryValue -Path $RdpTcpKey -Name 'SSLCertificateSHA1Hash' -Default $null)) {
        $pin = 'registry'
    }
    $facts = [ordered]@{
        thumbprint  = $thumbprint
        hash_type   = [int64]$setting.SSLCertificateSHA1HashType
        pin         = $pin
        store       = $null
        not_before  = $null
        not_after   = $null
        subject     = $null
        issuer      = $null
        self_signed = $null
        successors  = @()
    }
    $found = Find-Certificate -Thumbprint $thumbprint
    if ($null -ne $found) {
        $certificate = $found.Certificate
        $facts.store = $found.Store
        $facts.not_before = Format-UtcTime -Time $certificate.NotBefore
        $facts.not_after = Format-UtcTime -Time $certificate.NotAfter
        $facts.subject = Format-Clip -Text $certificate.Subject -Length 80
        $facts.issuer = Format-Clip -Text $certificate.Issuer -Length 80
        $facts.self_signed = $certificate.Subject -eq $certificate.Issuer
        $facts.successors = @(Get-Successors -Current $certificate -Now $Now)
    }
    $facts
}

function Get-Successors {
    # Certificates in LocalMachine\My an admin's listener certificate could be re-pinned to: same subject, valid
    # now, expiring later, for server authentication, with a key NETWORK SERVICE may read. At most 2.
    param([System.Security.Cryptography.X509Certificates.X509Certificate2]$Current, [datetime]$Now)
    $found = New-Object -TypeName 'System.Collections.Generic.List[object]'
    foreach ($candidate in @(Get-ChildItem -LiteralPath 'Cert:\LocalMachine\My')) {
        if ($found.Count -ge 2 -or $candidate.Thumbprint -eq $Current.Thumbprint -or $candidate.Subject -ne $Current.Subject) {
            continue
        }
        if ($candidate.NotBefore -gt $Now -or $candidate.NotAfter -le $Now -or $candidate.NotAfter -le $Current.NotAfter) {
            continue
        }
        $usages = @($candidate.EnhancedKeyUsageList | ForEach-Object { $_.ObjectId })
        if ($usages -notcontains '1.3.6.1.5.5.7.3.1' -and $usages -notcontains '1.3.6.1.4.1.311.54.1.2') {
            continue
        }
        $key = Resolve-KeyFile -Certificate $candidate -WindowsOwn $false
        if ($null -eq $key.Path -or -not (Test-Path -LiteralPath $key.Path)) {
            continue
        }
        if ((Get-KeyAccess -Path $key.Path).NetworkService -eq $true) {
            $found.Add([ordered]@{ thumbprint = $candidate.Thumbprint.ToUpperInvariant(); not_after = (Format-UtcTime -Time $candidate.NotAfter) })
        }
    }
    $found
}

function Get-KeyFacts {
    # The listener certificate's key as TermService (NETWORK SERVICE) meets it.
    param([object]$Listener)
    if ($null -eq $Listener -or $null -eq $Listener.store) {
        return $null
    }
    $certificate = (Find-Certificate -Thumbprint $Listener.thumbprint).Certificate
    $windowsOwn = $Listener.hash_type -eq 1 -and $Listener.store -eq 'Cert:\LocalMachine\Remote Desktop'
    $key = Resolve-KeyFile -Certificate $certificate -WindowsOwn $windowsOwn
    $facts = [ordered]@{ provider = $key.Provider; container = (Format-Clip -Text $key.Container -Length 64); file = $key.File; exists = $null; system_read = $null; network_service_read = $null; denies = $null; sddl = $null }
    if ($null -ne $key.Path) {
        $facts.exists = Test-Path -LiteralPath $key.Path
    }
    if ($facts.exists -eq $true) {
        $access = Get-KeyAccess -Path $key.Path
        $facts.system_read = $access.System
        $facts.network_service_read = $access.NetworkService
        $facts.denies = @($access.Denies | Select-Object -First 3)
        $facts.sddl = $access.Sddl
    }
    $facts
}

function Get-FolderFacts {
    # MachineKeys: exists, Administrators keep full control (KB 278381), and the newest backup's age.
    param([datetime]$Now)
    $facts = [ordered]@{ exists = (Test-Path -LiteralPath $MachineKeysPath); acl_ok = $null; sddl = $null; backup_age_hours = $null }
    if ($facts.exists) {
        $facts.acl_ok = Test-FolderAcl -Path $MachineKeysPath
        $facts.sddl = Format-Clip -Text (Get-FolderSddl -Path $MachineKeysPath) -Length 128
    }
    $newest = $null
    $rsa = Split-Path -Path $MachineKeysPath -Parent
    foreach ($backup in @(Get-ChildItem -LiteralPath $rsa -Directory -Filter 'MachineKeys.*.rdp-remediate.bak' -ErrorAction SilentlyContinue)) {
        $stamp = $backup.Name.Split('.')[1]
        $taken = [datetime]::ParseExact($stamp, "yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture, [System.Globalization.DateTimeStyles]::AssumeUniversal)
        if ($null -eq $newest -or $taken -gt $newest) {
            $newest = $taken
        }
    }
    if ($null -ne $newest) {
        $facts.backup_age_hours = [math]::Round(($Now.ToUniversalTime() - $newest.ToUniversalTime()).TotalHours, 2)
    }
    $facts
}

function Get-FolderSddl {
    # The folder's SDDL, or $null when its ACL is unreadable.
    param([string]$Path)
    try {
        return [string](Get-Acl -LiteralPath $Path).Sddl
    }
    catch [System.UnauthorizedAccessException] {
        Write-Step ('the ACL of {0} is unreadable: {1}' -f $Path, $_.Exception.Message)
        return $null
    }
}

function Test-FolderAcl {
    # Administrators have full control of the folder itself (KB 278381) and neither they nor SYSTEM are denied
    # anything; $null when the ACL is unreadable (unknown).
    param([string]$Path)
    try {
        $acl = Get-Acl -LiteralPath $Path
    }
    catch [System.UnauthorizedAccessException] {
        Write-Step ('the ACL of {0} is unreadable: {1}' -f $Path, $_.Exception.Message)
        return $null
    }
    $full = [int][System.Security.AccessControl.FileSystemRights]::FullControl
    $allowed = 0
    foreach ($rule in @($acl.GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier]))) {
        $sid = $rule.IdentityReference.Value
        if (@('S-1-5-18', 'S-1-5-32-544') -notcontains $sid -or $rule.PropagationFlags.HasFlag([System.Security.AccessControl.PropagationFlags]::InheritOnly)) {
            continue
        }
        if ($rule.AccessControlType -eq 'Deny') {
            return $false
        }
        $mask = [int]$rule.FileSystemRights
        if ($mask -band 0x10000000) {
            $mask = $mask -bor $full
        }
        if ($sid -eq 'S-1-5-32-544') {
            $allowed = $allowed -bor $mask
        }
    }
    ($allowed -band $full) -eq $full
}

function Get-Roles {
    # Server roles that keep keys in the machine store, from the services that carry them.
    $roles = New-Object -TypeName 'System.Collections.Generic.List[string]'
    foreach ($service in $RoleServices.Keys) {
        if ($null -ne (Get-Service -Name $service -ErrorAction SilentlyContinue)) {
            $roles.Add($RoleServices[$service])
        }
    }
    @($roles)
}

function Get-ServiceFacts {
    # State and start type of the Remote Desktop services, from WMI within its time limit.
    $facts = [ordered]@{}
    foreach ($name in @('TermService', 'SessionEnv', 'UmRdpService')) {
        $service = Get-CimInstance -ClassName 'Win32_Service' -Filter ("Name='{0}'" -f $name) -OperationTimeoutSec $CimTimeoutSeconds
        if ($null -eq $service) {
            $facts[$name] = [ordered]@{ state = 'NotFound'; start_type = 'NotFound' }
        }
        else {
            $facts[$name] = [ordered]@{ state = (Format-Clip -Text ([string]$service.State) -Length 16); start_type = (Format-Clip -Text ([string]$service.StartMode) -Length 16) }
        }
    }
    $facts
}

function Test-ProfileCovers {
    # A rule's Profile value ('Any' or a list such as 'Domain, Private') covers one of the active profiles.
    param([string]$Profiles, [string[]]$Active)
    if ($Profiles -eq 'Any') {
        return $true
    }
    foreach ($name in $Active) {
        if ($Profiles -like ('*' + $name + '*')) {
            return $true
        }
    }
    $false
}

function Test-PortCovers {
    # A port filter's LocalPort list covers the port: 'Any', the port itself, or a range 'low-high' that holds it
    # (New-NetFirewallRule -LocalPort accepts ranges such as 3380-3390).
    param([object[]]$Ports, [int64]$Port)
    foreach ($entry in @($Ports)) {
        $text = [string]$entry
        if ($text -eq 'Any' -or $text -eq [string]$Port) {
            return $true
        }
        $range = [regex]::Match($text, '^(\d+)-(\d+)$')
        if ($range.Success -and [int64]$range.Groups[1].Value -le $Port -and $Port -le [int64]$range.Groups[2].Value) {
            return $true
        }
    }
    $false
}

function Get-FirewallFacts {
    # By reachability: the profiles, which one is active, every enabled inbound allow rule (active store: local
    # and Group Policy merged as Windows applies them) for the listener's TCP port on an active profile, the
    # local built-in rule, and Group Policy copies of it.
    param([int64]$Port)
    $active = New-Object -TypeName 'System.Collections.Generic.List[string]'
    foreach ($connection in @(Receive-Bounded -Job (Get-NetConnectionProfile -AsJob))) {
        $category = [string]$connection.NetworkCategory
        if ($category -eq 'DomainAuthenticated') {
            $category = 'Domain'
        }
        if (-not $active.Contains($category)) {
            $active.Add($category)
        }
    }
    $profiles = [ordered]@{}
    foreach ($profile in @(Receive-Bounded -Job (Get-NetFirewallProfile -PolicyStore ActiveStore -AsJob))) {
        $profiles[[string]$profile.Name] = [ordered]@{ enabled = ([string]$profile.Enabled -eq 'True'); active = $active.Contains([string]$profile.Name) }
    }
    $paths = New-Object -TypeName 'System.Collections.Generic.List[object]'
    foreach ($filter in @(Receive-Bounded -Job (Get-NetFirewallPortFilter -PolicyStore ActiveStore -AsJob))) {
        $ports = @($filter.LocalPort | ForEach-Object { [string]$_ })
        if ([string]$filter.Protocol -ne 'TCP' -or -not (Test-PortCovers -Ports $ports -Port $Port)) {
            continue
        }
        $rule = Receive-Bounded -Job (Get-NetFirewallRule -AssociatedNetFirewallPortFilter $filter -AsJob)
        if ([string]$rule.Enabled -ne 'True' -or [string]$rule.Direction -ne 'Inbound' -or [string]$rule.Action -ne 'Allow') {
            continue
        }
        if (-not (Test-ProfileCovers -Profiles ([string]$rule.Profile) -Active @($active)) -or $paths.Count -ge 2) {
            continue
        }
        $remote = @((Receive-Bounded -Job (Get-NetFirewallAddressFilter -AssociatedNetFirewallRule $rule -AsJob)).RemoteAddress) -join ','
        $paths.Add([ordered]@{ rule = (Format-Clip -Text ([string]$rule.Name) -Length 40); profiles = (Format-Clip -Text ([string]$rule.Profile) -Length 24); remote = (Format-Clip -Text $remote -Length 40); policy = ([string]$rule.PolicyStoreSourceType -eq 'GroupPolicy') })
    }
    $builtin = $null
    $local = @(Receive-Bounded -Job (Get-NetFirewallRule -PolicyStore PersistentStore -Name $RdpTcpRule -AsJob))
    if ($local.Count -gt 0) {
        $localPort = @((Receive-Bounded -Job (Get-NetFirewallPortFilter -AssociatedNetFirewallRule $local[0] -AsJob)).LocalPort)[0]
        $builtinRemote = @((Receive-Bounded -Job (Get-NetFirewallAddressFilter -AssociatedNetFirewallRule $local[0] -AsJob)).RemoteAddress) -join ','
        $builtin = [ordered]@{ enabled = ([string]$local[0].Enabled -eq 'True'); profiles = (Format-Clip -Text ([string]$local[0].Profile) -Length 24); port = [int64]$localPort; any_ip = ($builtinRemote -eq 'Any') }
    }
    $copies = @(Receive-Bounded -Job (Get-NetFirewallRule -PolicyStore RSOP -Name $RdpTcpRule -AsJob)).Count
    [ordered]@{ profiles = $profiles; allow_paths = @($paths); builtin_rule = $builtin; policy_copies = $copies }
}

function Get-PortOwner {
    # The service (or process) listening on the port; '' when nothing listens.
    param([int64]$Port)
    $listeners = @(Receive-Bounded -Job (Get-NetTCPConnection -State Listen -LocalPort $Port -AsJob))
    if ($listeners.Count -eq 0) {
        return ''
    }
    $processId = [int64]$listeners[0].OwningProcess
    $service = @(Get-CimInstance -ClassName 'Win32_Service' -Filter ('ProcessId = {0}' -f $processId) -OperationTimeoutSec $CimTimeoutSeconds)
    # A shared service host runs several services: the listener's owner is TermService when it is one of them.
    if (@($service | Where-Object { $_.Name -eq 'TermService' }).Count -gt 0) {
        return 'TermService'
    }
    if ($service.Count -gt 0) {
        return Format-Clip -Text ([string]$service[0].Name) -Length 60
    }
    Format-Clip -Text ([string](Get-Process -Id $processId).ProcessName) -Length 60
}

function Test-ServerProtocol {
    # SCHANNEL's server side of a protocol: the registry when it says, else the build's default (TLS 1.2 on;
    # TLS 1.3 on from Windows Server 2022, build 20348).
    param([string]$Protocol, [bool]$Default)
    $key = Join-Path -Path $SchannelKey -ChildPath ($Protocol + '\Server')
    $enabled = Get-RegistryValue -Path $key -Name 'Enabled' -Default $null
    $disabledByDefault = Get-RegistryValue -Path $key -Name 'DisabledByDefault' -Default $null
    if ($null -eq $enabled -and $null -eq $disabledByDefault) {
        return $Default
    }
    ($enabled -ne 0) -and ($disabledByDefault -ne 1)
}

function Get-EventFacts {
    # Per event: how often the System log recorded it in the last 24 hours and the newest message (ASCII).
    param([datetime]$Since)
    $facts = [ordered]@{}
    $sources = [ordered]@{ '1057' = 'Microsoft-Windows-TerminalServices-RemoteConnectionManager'; '1058' = 'Microsoft-Windows-TerminalServices-RemoteConnectionManager'; '36870' = 'Schannel'; '36871' = 'Schannel' }
    foreach ($id in $sources.Keys) {
        $filter = @{ LogName = 'System'; ProviderName = $sources[$id]; Id = [int]$id; StartTime = $Since }
        $events = @(Get-WinEvent -FilterHashtable $filter -MaxEvents 100 -ErrorAction SilentlyContinue)
        $last = $null
        if ($events.Count -gt 0) {
            $last = Format-Clip -Text ($events[0].Message -replace '\s+', ' ') -Length 40
        }
        $facts[$id] = [ordered]@{ count = $events.Count; last = $last }
    }
    $facts
}

function Get-ClockFacts {
    # The phase offset the Windows Time service measured against its source, in whole seconds (w32tm /query
    # /status /verbose; on Azure the source is normally the Hyper-V "VM IC Time Synchronization Provider"). Run as
    # a job: a hung time service ends at the time limit. A label w32tm does not print (or localizes) leaves null.
    $job = Start-Job -ScriptBlock { & w32tm.exe /query /status /verbose }
    $offset = $null
    foreach ($line in @(Receive-Bounded -Job $job)) {
        $match = [regex]::Match([string]$line, '^\s*Phase Offset:\s*(-?[0-9]+(\.[0-9]+)?)s')
        if ($match.Success) {
            $offset = [int64][math]::Round([double]::Parse($match.Groups[1].Value, [Globalization.CultureInfo]::InvariantCulture))
        }
    }
    [ordered]@{ offset_seconds = $offset }
}

function Get-CryptoFacts {
    # FIPS mode (the "Use FIPS compliant algorithms" policy writes FipsAlgorithmPolicy\Enabled) and the cipher
    # suite order Group Policy sets (SSL\00010002 Functions): how many suites, and how many are ECDHE with AES-GCM.
    $fips = Get-RegistryValue -Path 'HKLM:\SYSTEM\CurrentControlSet\Control\Lsa\FipsAlgorithmPolicy' -Name 'Enabled' -Default 0
    $functions = Get-RegistryValue -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Cryptography\Configuration\SSL\00010002' -Name 'Functions' -Default $null
    $count = $null
    $gcm = $null
    if ($null -ne $functions) {
        $suites = @(@($functions) -join ',' -split ',' | ForEach-Object { $_.Trim() } | Where-Object { $_ -ne '' })
        $count = $suites.Count
        $gcm = @($suites | Where-Object { $_ -like 'TLS_ECDHE_*_GCM_*' }).Count
    }
    [ordered]@{ fips = ([int64]$fips -ne 0); cipher_suites = $count; tls12_ecdhe_gcm = $gcm }
}

function Get-FailedLogons {
    # Security event 4625 (an account failed to log on) in the last hour, by logon type: 10 RemoteInteractive,
    # 3 Network (what NLA produces). A job, so that a large Security log ends at the time limit.
    $job = Start-Job -ScriptBlock {
        $counts = @{}
        foreach ($type in @(10, 3)) {
            $xpath = "*[System[(EventID=4625) and TimeCreated[timediff(@SystemTime) <= 3600000]]] and *[EventData[Data[@Name='LogonType']='$type']]"
            $counts[[string]$type] = @(Get-WinEvent -LogName 'Security' -FilterXPath $xpath -MaxEvents 20000 -ErrorAction SilentlyContinue).Count
        }
        $counts
    }
    $counts = @(Receive-Bounded -Job $job)[0]
    [ordered]@{ type10 = [int64]$counts['10']; type3 = [int64]$counts['3'] }
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    refused         = $null
    actions         = New-Object -TypeName 'System.Collections.Generic.List[string]'
    findings        = [ordered]@{
        os_build       = $null
        dotnet_release = $null
        rdp_config     = $null
        listener       = $null
        key            = $null
        machinekeys    = $null
        other_keys     = $null
        roles          = $null
        services       = $null
        firewall       = $null
        port_owner     = $null
        sessions       = $null
        tls            = $null
        events         = $null
        clock          = $null
        crypto         = $null
        failed_logons  = $null
    }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}

# Each check has its own try/catch, named after the fact it fills: one that fails or times out leaves that fact
# null (unknown) and the next one still runs.
$now = Get-Date
$findings = $summary.findings
$port = 3389
Write-Step ('{0} on {1}, read-only' -f $ScriptVersion, $env:COMPUTERNAME)

try {
    $version = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
    $findings.os_build = '10.0.{0}.{1}' -f (Get-RegistryValue -Path $version -Name 'CurrentBuildNumber' -Default 0), (Get-RegistryValue -Path $version -Name 'UBR' -Default 0)
}
catch {
    Add-CheckError -Check 'os_build' -Record $_ -Errors $summary.errors
}

try {
    $findings.dotnet_release = [int64](Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\NET Framework Setup\NDP\v4\Full' -Name 'Release' -Default 0)
}
catch {
    Add-CheckError -Check 'dotnet_release' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'listener settings'
    # Group Policy has no setting for the port: PortNumber is read where the listener reads it.
    $port = Get-RdpSetting -Path $RdpTcpKey -Name 'PortNumber' -Default 3389 -LocalOnly
    $findings.rdp_config = [ordered]@{
        port                = $port
        deny_connections    = (Get-RdpSetting -Path $TerminalServerKey -Name 'fDenyTSConnections' -Default 0) -ne 0
        security_layer      = Get-RdpSetting -Path $RdpTcpKey -Name 'SecurityLayer' -Default 2
        user_authentication = Get-RdpSetting -Path $RdpTcpKey -Name 'UserAuthentication' -Default 1
        lan_adapter         = [int64](Get-RegistryValue -Path $RdpTcpKey -Name 'LanAdapter' -Default 0)
        min_encryption_level = Get-RdpSetting -Path $RdpTcpKey -Name 'MinEncryptionLevel' -Default 2
    }
}
catch {
    Add-CheckError -Check 'rdp_config' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'listener certificate'
    $findings.listener = Get-ListenerFacts -Now $now
}
catch {
    Add-CheckError -Check 'listener' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'listener key'
    $findings.key = Get-KeyFacts -Listener $findings.listener
}
catch {
    Add-CheckError -Check 'key' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'machine key store'
    $findings.machinekeys = Get-FolderFacts -Now $now
}
catch {
    Add-CheckError -Check 'machinekeys' -Record $_ -Errors $summary.errors
}

try {
    $listenerFile = ''
    if ($null -ne $findings.key -and $null -ne $findings.key.file) {
        $listenerFile = $findings.key.file
    }
    $findings.other_keys = Get-OtherKeys -ListenerFile $listenerFile
}
catch {
    Add-CheckError -Check 'other_keys' -Record $_ -Errors $summary.errors
}

try {
    $findings.roles = Get-Roles
}
catch {
    Add-CheckError -Check 'roles' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'services'
    $findings.services = Get-ServiceFacts
}
catch {
    Add-CheckError -Check 'services' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'firewall'
    $findings.firewall = Get-FirewallFacts -Port $port
}
catch {
    Add-CheckError -Check 'firewall' -Record $_ -Errors $summary.errors
}

try {
    $findings.port_owner = Get-PortOwner -Port $port
}
catch {
    Add-CheckError -Check 'port_owner' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'sessions'
    $findings.sessions = [ordered]@{ remote = (Get-RdpSessionCount -LogonType 10); cached = (Get-RdpSessionCount -LogonType 12) }
}
catch {
    Add-CheckError -Check 'sessions' -Record $_ -Errors $summary.errors
}

try {
    $build = [int](Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion' -Name 'CurrentBuildNumber' -Default 0)
    $findings.tls = [ordered]@{ tls12_server = (Test-ServerProtocol -Protocol 'TLS 1.2' -Default $true); tls13_server = (Test-ServerProtocol -Protocol 'TLS 1.3' -Default ($build -ge 20348)) }
}
catch {
    Add-CheckError -Check 'tls' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'events of the last 24 hours'
    $findings.events = Get-EventFacts -Since $now.AddHours(-24)
}
catch {
    Add-CheckError -Check 'events' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'clock'
    $findings.clock = Get-ClockFacts
}
catch {
    Add-CheckError -Check 'clock' -Record $_ -Errors $summary.errors
}

try {
    $findings.crypto = Get-CryptoFacts
}
catch {
    Add-CheckError -Check 'crypto' -Record $_ -Errors $summary.errors
}

try {
    Write-Step 'failed logons of the last hour'
    $findings.failed_logons = Get-FailedLogons
}
catch {
    Add-CheckError -Check 'failed_logons' -Record $_ -Errors $summary.errors
}

Write-Summary -Summary $summary
