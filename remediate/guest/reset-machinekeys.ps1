<#
.SYNOPSIS
    The last rung for Windows' own RDP certificate: renames the whole MachineKeys folder to a timestamped backup
    and swaps in a new, empty one with Windows' default permissions, so that Windows makes new keys and a new RDP
    certificate at the next boot. No Microsoft article documents this step; it is community practice, used
    only when renewing after setting aside the listener's own key container did not help.

.DESCRIPTION
    Lists every other LocalMachine certificate whose key lives in MachineKeys (IIS, .NET, the Azure agent's
    "Windows Azure CRP Certificate Generator" transport certificate, a CA's or RD Gateway's keys): they are all
    set aside with the folder. Refuses, reporting why: when a backup newer than a day exists (it already ran:
    idempotent on a retried or redelivered step); and, unless Force is 'true', when other certificates' keys or
    server roles (domain controller, AD CS, IIS, RD Gateway, RD Connection Broker, RD Licensing) depend on the
    store. Builds the new folder (MachineKeys.<stamp>.rdp-remediate.new, default security descriptor) before the
    swap: rename MachineKeys to MachineKeys.<stamp>.rdp-remediate.bak, then the new folder to MachineKeys; when
    the second rename fails, the backup is renamed back at once. Never deletes anything. A reboot is required.

.PARAMETER DetectOnly
    'true' lists what would be set aside and changes nothing. Default 'false'.

.PARAMETER Force
    'true' renames even when other certificates' keys or server roles depend on the store. Default 'false'.

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
    [string]$Force = 'false'
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
    # The certificate the RDP listener uses, as Windows reports it; '' when it reports none.
    $setting = Get-ListenerSetting
    if ($null -eq $setting -or -not $setting.SSLCertificateSHA1Hash -or $setting.SSLCertificateSHA1Hash -match '^0+$') {
        return ''
    }
    ([string]$setting.SSLCertificateSHA1Hash).ToUpperInvariant()
}

function Resolve-KeyFile {
    # Where a certificate's private key lives: CSP keys in Crypto\RSA\MachineKeys (the container's unique name is
    # the file name), CNG keys in Crypto\Keys (the key's unique name). Windows' own RDP key (TSSecKeySet1) is
    # known without opening it: f686aace6942fb7f7ceb231212eef4a4_<MachineGuid>. Another key must be opened to be
    # found; when it does not open, the file is unknown ($null), never guessed.
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
            $result.Path = Join-Path -Path $CngKeysPath -ChildPath $result.File
        }
        elseif ($key -is [System.Security.Cryptography.RSACryptoServiceProvider]) {
            $result.Provider = 'csp'
            $result.Container = $key.CspKeyContainerInfo.KeyContainerName
            $result.File = $key.CspKeyContainerInfo.UniqueKeyContainerName
            $result.Path = Join-Path -Path $MachineKeysPath -ChildPath $result.File
        }
    }
    catch {
        Write-Step ('the key of {0} does not open as SYSTEM: {1}' -f $Certificate.Thumbprint, $_.Exception.Message)
    }
    $result
}

function Format-Clip {
    # A text fact as the contract's safeText: characters JSON never escapes (any other becomes ?), clipped to its
    # contract length, so that its length is its size in the summary.
    param([string]$Text, [int]$Length)
    if ($null -eq $Text) {
        return $null
    }
    $Text = $Text -replace '[^A-Za-z0-9 .,:;=_()/@+#*?-]', '?'
    if ($Text.Length -gt $Length) {
        return $Text.Substring(0, $Length)
    }
    $Text
}

function Get-OtherKeys {
    # LocalMachine certificates other than the listener's whose keys live in MachineKeys: what a whole-store
    # rename would set aside. A key that does not open is counted too (its file is unknown, so it may be there).
    param([string]$Listener)
    $names = New-Object -TypeName 'System.Collections.Generic.List[string]'
    $count = 0
    foreach ($store in @(Get-ChildItem -LiteralPath 'Cert:\LocalMachine')) {
        foreach ($certificate in @(Get-ChildItem -LiteralPath $store.PSPath | Where-Object { $_.HasPrivateKey })) {
            if ($certificate.Thumbprint -eq $Listener) {
                continue
            }
            $key = Resolve-KeyFile -Certificate $certificate -WindowsOwn $false
            if ($key.Provider -eq 'cng') {
                continue
            }
            $count++
            if ($names.Count -lt 5) {
                $label = $certificate.FriendlyName
                if (-not $label) {
                    $label = $certificate.GetNameInfo([System.Security.Cryptography.X509Certificates.X509NameType]::SimpleName, $false)
                }
                $names.Add((Format-Clip -Text ('{0} ({1})' -f $label, $store.Name) -Length 48))
            }
        }
    }
    [ordered]@{ count = $count; names = @($names) }
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
    findings        = [ordered]@{ renamed = $false; backup_path = $null; would_set_aside = [ordered]@{ count = 0; names = @() } }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}

try {
    Write-Step ('{0} on {1}, DetectOnly={2}, Force={3}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly, $Force)
    $listener = Get-ListenerThumbprint
    $others = Get-OtherKeys -Listener $listener
    $summary.findings.would_set_aside = $others
    $roles = Get-Roles
    $age = Get-NewestBackupAge
    $refusal = ''
    if ($age -ge 0 -and $age -lt 24) {
        $refusal = 'a MachineKeys backup {0:N1} hours old exists: the reset already ran' -f $age
    }
    elseif (($others['count'] -gt 0 -or $roles.Count -gt 0) -and $Force -ne 'true') {
        $refusal = 'it would set aside the keys of {0} other certificate(s) [{1}] and affect roles [{2}]: not without Force' -f $others['count'], ($others['names'] -join ', '), ($roles -join ', ')
    }
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
        else {
            $newName = 'MachineKeys.{0}.rdp-remediate.new' -f $stamp
            $summary.changed = $true
            $null = New-KeyStoreFolder -Name $newName
            Invoke-Swap -Summary $summary -NewName $newName -BackupName ('MachineKeys.{0}.rdp-remediate.bak' -f $stamp)
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
