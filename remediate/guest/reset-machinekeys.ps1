<#
.SYNOPSIS
    The last rung for Windows' own RDP certificate: renames the whole MachineKeys folder to a timestamped backup
    and swaps in a new, empty one with Windows' default permissions, so that Windows makes new keys and a new RDP
    certificate at the next boot. No Microsoft article documents this step; it is community practice, used
    only when renewing after setting aside the listener's own key container did not help.

.DESCRIPTION
    Lists every other file in MachineKeys (certificates' keys and key containers without a certificate, such as
    iisConfigurationKey or NetFrameworkConfigurationKey): they are all set aside with the folder. The Azure
    agent's transport certificate (issuer DC=Windows Azure CRP Certificate Generator) is not counted: its key file
    is copied, with its ACL, into the new folder so that extensions (Run Command among them) keep working.
    Re-checks the facts it was chosen for and refuses, reporting why: when a backup newer than a day exists (it
    already ran: idempotent on a retried or redelivered step); on a domain controller or a certification
    authority, always; when the listener's certificate is not Windows' own (HashType 1) or its key works again;
    unless AllowSessions is 'true', while remote sessions exist or cannot be counted; and, unless Force is
    'true', when other key files or server roles (IIS, RD Gateway, RD Connection Broker, RD Licensing) depend on
    the store. A missing MachineKeys is created with the default security descriptor (nothing to rename). Builds the new folder (MachineKeys.<stamp>.rdp-remediate.new, default security descriptor) before the
    swap: rename MachineKeys to MachineKeys.<stamp>.rdp-remediate.bak, then the new folder to MachineKeys; when
    the second rename fails, the backup is renamed back at once. Never deletes anything. A reboot is required.

.PARAMETER DetectOnly
    'true' lists what would be set aside and changes nothing. Default 'false'.

.PARAMETER Force
    'true' renames even when other key files or server roles depend on the store (never on a domain controller
    or a certification authority). Default 'false'.

.PARAMETER AllowSessions
    'true' renames even while remote sessions exist (the reboot that follows ends them). Default 'false'.

.OUTPUTS
    Progress lines, then one compact ASCII JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: stop the services using machine keys (or boot into safe mode), rename the new MachineKeys aside, rename
    the backup back to MachineKeys, and reboot.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false',

    [ValidateSet('true', 'false')]
    [string]$Force = 'false',

    [ValidateSet('true', 'false')]
    [string]$AllowSessions = 'false'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'reset-machinekeys'
$ScriptVersion = '2.0.0'

$CimTimeoutSeconds = 20
$CryptoPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto'
$MachineKeysPath = Join-Path -Path $CryptoPath -ChildPath 'RSA\MachineKeys'
$CngKeysPath = Join-Path -Path $CryptoPath -ChildPath 'Keys'
# Owner SYSTEM; Everyone may list and add keys (this folder only); Administrators full control; not inherited.
$DefaultMachineKeysSddl = 'O:SYG:SYD:PAI(A;;0x12019f;;;WD)(A;;FA;;;BA)'
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

function Get-ListenerThumbprint {
    # The certificate the RDP listener uses, as Windows reports it; '' when it reports none. No RDP-tcp instance
    # at all is not "no certificate" but unknown: it throws.
    $setting = Get-ListenerSetting
    if ($null -eq $setting) {
        throw 'Win32_TSGeneralSetting has no RDP-tcp instance: the listener''s certificate is unknown'
    }
    if (-not $setting.SSLCertificateSHA1Hash -or $setting.SSLCertificateSHA1Hash -match '^0+$') {
        return ''
    }
    ([string]$setting.SSLCertificateSHA1Hash).ToUpperInvariant()
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

function Test-ListenerKeyWorks {
    # The listener has a certificate whose private key opens as SYSTEM: the store is not what is broken.
    $thumbprint = Get-ListenerThumbprint
    if (-not $thumbprint) {
        return $false
    }
    foreach ($store in @('Cert:\LocalMachine\Remote Desktop', 'Cert:\LocalMachine\My')) {
        $path = Join-Path -Path $store -ChildPath $thumbprint
        if (Test-Path -LiteralPath $path) {
            try {
                $key = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPrivateKey((Get-Item -LiteralPath $path))
                return $null -ne $key
            }
            catch {
                Write-Step ('the listener''s key does not open: {0}' -f $_.Exception.Message)
                return $false
            }
        }
    }
    $false
}

function Get-ResetRefusal {
    # Why the rename must not run now; '' when every fact it was chosen for still holds.
    param([object]$Others, [string[]]$Roles)
    $age = Get-NewestBackupAge
    if ($age -ge 0 -and $age -lt 24) {
        return ('a MachineKeys backup {0:N1} hours old exists: the reset already ran' -f $age)
    }
    $critical = @($Roles | Where-Object { $_ -eq 'domain-controller' -or $_ -eq 'ad-cs' })
    if ($critical.Count -gt 0) {
        return ('this machine is a {0}: MachineKeys is never renamed here' -f ($critical -join ', '))
    }
    $setting = Get-ListenerSetting
    if ($null -ne $setting -and (Get-ListenerThumbprint) -and [int64]$setting.SSLCertificateSHA1HashType -ne 1) {
        return ('the listener''s certificate is not Windows'' own (HashType {0}): the store stays' -f $setting.SSLCertificateSHA1HashType)
    }
    if ((Test-Path -LiteralPath $MachineKeysPath) -and (Test-ListenerKeyWorks)) {
        return 'the listener''s key works again: the store is not renamed'
    }
    if ($AllowSessions -ne 'true') {
        $sessions = -1
        try {
            $sessions = (Get-RdpSessionCount -LogonType 10) + (Get-RdpSessionCount -LogonType 12)
        }
        catch {
            Write-Step ('the sessions could not be counted: {0}' -f $_.Exception.Message)
        }
        if ($sessions -ne 0) {
            return ('remote sessions (logon types 10 and 12): {0} (-1: could not be counted); the reboot would drop them' -f $sessions)
        }
    }
    if (($Others['count'] -gt 0 -or $Roles.Count -gt 0) -and $Force -ne 'true') {
        return ('it would set aside {0} other key file(s) [{1}] and affect roles [{2}]: not without Force' -f $Others['count'], ($Others['names'] -join ', '), ($Roles -join ', '))
    }
    ''
}

function Copy-CrpKey {
    # The CRP transport key into the new folder, with its ACL: the agent keeps decrypting extension settings.
    param([System.Collections.IDictionary]$Summary, [string]$File, [string]$NewPath)
    if (-not $File) {
        return
    }
    $source = Join-Path -Path $MachineKeysPath -ChildPath $File
    $target = Join-Path -Path $NewPath -ChildPath $File
    Copy-Item -LiteralPath $source -Destination $target
    try {
        Set-Acl -LiteralPath $target -AclObject (Get-Acl -LiteralPath $source)
    }
    catch [System.UnauthorizedAccessException] {
        Add-Text -List $Summary.errors -Text ('the ACL of {0} is unreadable: the copy has the new folder''s defaults' -f $source)
    }
    $Summary.findings.carried = $File
    Add-Text -List $Summary.actions -Text ('copied the CRP transport key {0} into the new MachineKeys' -f $File)
}

function Get-TimeStamp {
    # A UTC time stamp for backup names: sorts by time, never collides with an earlier run.
    (Get-Date).ToUniversalTime().ToString("yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture)
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

function Get-NewestBackupAge {
    # Hours since the newest MachineKeys.<stamp>.rdp-remediate.bak was made; -1 when there is none.
    $rsa = Split-Path -Path $MachineKeysPath -Parent
    $newest = $null
    foreach ($backup in @(Get-ChildItem -LiteralPath $rsa -Directory -Filter 'MachineKeys.*.rdp-remediate.bak' -ErrorAction SilentlyContinue)) {
        $taken = [datetime]::ParseExact($backup.Name.Split('.')[1], "yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture, [System.Globalization.DateTimeStyles]::AssumeUniversal)
        if ($null -eq $newest -or $taken -gt $newest) {
            $newest = $taken
        }
    }
    if ($null -eq $newest) {
        return -1
    }
    ((Get-Date).ToUniversalTime() - $newest.ToUniversalTime()).TotalHours
}

function New-KeyStoreFolder {
    # The new MachineKeys, built beside the old one before the swap, with the default security descriptor.
    param([string]$Name)
    $path = Join-Path -Path (Split-Path -Path $MachineKeysPath -Parent) -ChildPath $Name
    $null = New-Item -ItemType Directory -Path $path
    $acl = New-Object -TypeName System.Security.AccessControl.DirectorySecurity
    $acl.SetSecurityDescriptorSddlForm($DefaultMachineKeysSddl)
    Set-Acl -LiteralPath $path -AclObject $acl
    $path
}

function Invoke-Swap {
    # Old folder to the backup name, new folder to MachineKeys; the backup goes back when the second rename fails.
    param([System.Collections.IDictionary]$Summary, [string]$NewName, [string]$BackupName)
    $rsa = Split-Path -Path $MachineKeysPath -Parent
    Rename-Item -LiteralPath $MachineKeysPath -NewName $BackupName
    try {
        Rename-Item -LiteralPath (Join-Path -Path $rsa -ChildPath $NewName) -NewName 'MachineKeys'
    }
    catch {
        Add-Text -List $Summary.errors -Text (Format-ErrorText -Record $_)
        Rename-Item -LiteralPath (Join-Path -Path $rsa -ChildPath $BackupName) -NewName 'MachineKeys'
        Add-Text -List $Summary.actions -Text ('renamed the backup {0} back to MachineKeys; the new folder {1} is left beside it' -f $BackupName, $NewName)
        return
    }
    $Summary.findings.renamed = $true
    $Summary.findings.backup_path = Join-Path -Path $rsa -ChildPath $BackupName
    $Summary.reboot_required = $true
    Add-Text -List $Summary.actions -Text ('swapped in a new MachineKeys with the default permissions; the old one is {0}; reboot so that Windows makes new keys' -f $BackupName)
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    refused         = $null
    actions         = New-Object -TypeName 'System.Collections.Generic.List[string]'
    findings        = [ordered]@{ renamed = $false; backup_path = $null; would_set_aside = [ordered]@{ count = 0; names = @() }; carried = $null }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}

try {
    Write-Step ('{0} on {1}, DetectOnly={2}, Force={3}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly, $Force)
    $guid = Get-RegistryValue -Path 'HKLM:\SOFTWARE\Microsoft\Cryptography' -Name 'MachineGuid' -Default ''
    $others = Get-OtherKeys -ListenerFile ('f686aace6942fb7f7ceb231212eef4a4_' + $guid)
    $summary.findings.would_set_aside = [ordered]@{ count = $others['count']; names = $others['names'] }
    $roles = @(Get-Roles)
    $refusal = Get-ResetRefusal -Others $others -Roles $roles
    if ($refusal) {
        $summary.refused = $refusal
        Add-Text -List $summary.actions -Text ('refused: {0}' -f $refusal)
    }
    else {
        $stamp = Get-TimeStamp
        if ($summary.detect_only) {
            foreach ($name in $others['names']) {
                Add-Text -List $summary.actions -Text ('would set aside the key of {0}' -f $name)
            }
            Add-Text -List $summary.actions -Text ('would build a new MachineKeys and swap it in; the old one kept as MachineKeys.{0}.rdp-remediate.bak' -f $stamp)
        }
        elseif (-not (Test-Path -LiteralPath $MachineKeysPath)) {
            $summary.changed = $true
            $null = New-KeyStoreFolder -Name 'MachineKeys'
            $summary.reboot_required = $true
            Add-Text -List $summary.actions -Text ('{0} was missing: created it with the default security descriptor; reboot so that Windows makes new keys' -f $MachineKeysPath)
        }
        else {
            $newName = 'MachineKeys.{0}.rdp-remediate.new' -f $stamp
            $summary.changed = $true
            $newPath = New-KeyStoreFolder -Name $newName
            Copy-CrpKey -Summary $summary -File (Get-CrpKeyFile) -NewPath $newPath
            Invoke-Swap -Summary $summary -NewName $newName -BackupName ('MachineKeys.{0}.rdp-remediate.bak' -f $stamp)
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
