<#
.SYNOPSIS
    Repairs the one key file of the listener's certificate the engine names (grant read, or remove the deny
    entries that stop SYSTEM or NETWORK SERVICE), or restores Administrators' full control of the MachineKeys
    folder itself. Never recursive. (A key that must be replaced is set aside by renew-certificate.ps1, in the
    same Run Command as the renewal that replaces it.)

.DESCRIPTION
    Mode 'grant', 'remove-deny': first re-checks that the listener still uses the certificate
    named by Thumbprint and that its key is the file named by KeyFile (resolved again from the certificate:
    CSP keys in Crypto\RSA\MachineKeys, CNG keys in Crypto\Keys); otherwise reports `refused`. 'grant' refuses
    when a deny entry applies (icacls /grant cannot undo a deny); 'remove-deny' removes the deny entries for
    the SIDs in SYSTEM's and NETWORK SERVICE's tokens, then grants; both grant SYSTEM full control and NETWORK
    SERVICE read by SID on that one file (KB 2001849), after saving its ACL with icacls /save.
    Mode 'folder': saves the folder's ACL, takes ownership of the folder only and grants Administrators full
    control (KB 278381).

.PARAMETER DetectOnly
    'true' reports what would change and changes nothing. Default 'false'.

.PARAMETER Mode
    'grant', 'remove-deny' or 'folder'. Default 'grant'.

.PARAMETER Thumbprint
    The listener's certificate (40 hex digits). Required except for Mode 'folder'.

.PARAMETER KeyFile
    The key file's name (no path). Required except for Mode 'folder'.

.OUTPUTS
    Progress lines, then one compact ASCII JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: icacls <folder> /restore <log_path>\<name>.acl puts the saved ACL back (every deny entry removed
    included: icacls /remove:d removes all of a SID's deny entries); the owner is given back at the end of the
    repair and recorded in acl.log and findings.owner.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false',

    [ValidateSet('grant', 'remove-deny', 'folder')]
    [string]$Mode = 'grant',

    [ValidatePattern('^([0-9A-Fa-f]{40})?$')]
    [string]$Thumbprint = '',

    [ValidatePattern('^([0-9A-Za-z_.-]{1,200})?$')]
    [string]$KeyFile = ''
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'repair-machinekeys'
$ScriptVersion = '2.0.0'

$CimTimeoutSeconds = 20
$CryptoPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto'
$MachineKeysPath = Join-Path -Path $CryptoPath -ChildPath 'RSA\MachineKeys'
$CngKeysPath = Join-Path -Path $CryptoPath -ChildPath 'Keys'
$LogRoot = Join-Path -Path $env:ProgramData -ChildPath 'rdp-remediate'
$KeyGrants = @('*S-1-5-18:(F)', '*S-1-5-20:(R)')
$FolderGrants = @('*S-1-5-32-544:(F)')
# Both also hold BUILTIN\Users S-1-5-32-545 and LOCAL S-1-2-0; TermService's token holds its service SID
# NT SERVICE\TermService (Microsoft Learn, "Well-known SIDs", "Service SIDs").
$TokenSids = @{
    'S-1-5-18' = @('S-1-5-18', 'S-1-1-0', 'S-1-5-11', 'S-1-5-32-544', 'S-1-5-32-545', 'S-1-2-0')
    'S-1-5-20' = @('S-1-5-20', 'S-1-1-0', 'S-1-5-11', 'S-1-5-6', 'S-1-5-32-545', 'S-1-2-0', 'S-1-5-80-446051430-1559341753-4161941529-1950928533-810483104')
}

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

function Assert-ExitCode {
    # Windows tools report failure only through their exit code: turn it into an error.
    param([string]$Tool, [object[]]$Output)
    if ($LASTEXITCODE -ne 0) {
        throw ('{0} failed with exit code {1}: {2}' -f $Tool, $LASTEXITCODE, ($Output -join ' '))
    }
}

function Get-TimeStamp {
    # A UTC time stamp for backup names: sorts by time, never collides with an earlier run.
    (Get-Date).ToUniversalTime().ToString("yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture)
}

function Repair-Acl {
    # One file or folder, never recursive: save its ACL for icacls /restore, take ownership, remove the named
    # deny entries, grant by SID, then give the object back to its owner (icacls /save keeps only the DACL, so
    # the owner is recorded and restored with /setowner). When even the save is denied (no entry for SYSTEM,
    # another owner), ownership comes first: the owner may always read and change the ACL, so the save then
    # works. icacls /remove:d removes every deny entry of that SID, whatever its rights: the saved ACL has them
    # all. Returns the owner's SID ('' when it could not be read).
    param([string]$Path, [string[]]$Grants, [string[]]$Denies, [string]$LogFolder, [string]$LogFile)
    $owner = ''
    try {
        $owner = (Get-Acl -LiteralPath $Path).GetOwner([System.Security.Principal.SecurityIdentifier]).Value
    }
    catch [System.UnauthorizedAccessException] {
        Write-Step ('the owner of {0} is unreadable: {1}' -f $Path, $_.Exception.Message)
    }
    Add-Content -LiteralPath $LogFile -Value ('owner of {0} before: {1}' -f $Path, $owner)
    $saved = Join-Path -Path $LogFolder -ChildPath ((Split-Path -Path $Path -Leaf) + '.acl')
    $output = icacls.exe $Path /save $saved
    $unreadable = $LASTEXITCODE -ne 0
    if ($unreadable) {
        Write-Step ('the ACL of {0} is unreadable: taking ownership first' -f $Path)
        Add-Content -LiteralPath $LogFile -Value ('ACL unreadable {0}: icacls /save said: {1}; took ownership before saving it' -f $Path, ($output -join ' '))
    }
    $output = takeown.exe /f $Path
    Assert-ExitCode -Tool 'takeown' -Output $output
    if ($unreadable) {
        $output = icacls.exe $Path /save $saved
        Assert-ExitCode -Tool 'icacls /save' -Output $output
    }
    foreach ($sid in $Denies) {
        Add-Content -LiteralPath $LogFile -Value ('removing every deny entry of {0} on {1}' -f $sid, $Path)
        $output = icacls.exe $Path /remove:d ('*' + $sid)
        Assert-ExitCode -Tool 'icacls /remove:d' -Output $output
    }
    $output = icacls.exe $Path /grant $Grants
    Assert-ExitCode -Tool 'icacls /grant' -Output $output
    if ($owner) {
        $ownerSid = '*' + $owner
        $output = icacls.exe $Path /setowner $ownerSid
        Assert-ExitCode -Tool 'icacls /setowner' -Output $output
    }
    $owner
}

function New-LogFolder {
    # Where the ACLs before and after are kept: one folder per run.
    $folder = Join-Path -Path $LogRoot -ChildPath ('{0}-repair-machinekeys' -f (Get-TimeStamp))
    $null = New-Item -ItemType Directory -Path $folder -Force
    $folder
}

function Get-TargetRefusal {
    # The listener still uses the named certificate and its key is the named file; '' when so.
    param([object]$Setting, [object]$Key)
    $current = Get-ListenerThumbprint
    if (-not $Thumbprint -or $current -ne $Thumbprint.ToUpperInvariant()) {
        return ('the listener uses {0}, not {1}: the facts changed since the engine decided' -f $current, $Thumbprint)
    }
    if ($null -eq $Key -or $Key.File -ne $KeyFile) {
        return ('{0} is not the key file of {1}' -f $KeyFile, $current)
    }
    if (-not (Test-Path -LiteralPath $Key.Path)) {
        return ('{0} does not exist' -f $Key.Path)
    }
    ''
}

function Resolve-ListenerKey {
    # The listener certificate's key file, resolved again from the certificate itself.
    param([object]$Setting)
    $found = Find-Certificate -Thumbprint $Thumbprint.ToUpperInvariant()
    if ($null -eq $found) {
        return $null
    }
    $windowsOwn = [int64]$Setting.SSLCertificateSHA1HashType -eq 1 -and $found.Store -eq 'Cert:\LocalMachine\Remote Desktop'
    Resolve-KeyFile -Certificate $found.Certificate -WindowsOwn $windowsOwn
}

function Invoke-KeyRepair {
    # grant / remove-deny on the one key file.
    param([System.Collections.IDictionary]$Summary, [object]$Key)
    $findings = $Summary.findings
    $access = Get-KeyAccess -Path $Key.Path
    $findings.ok_before = $access.System -and $access.NetworkService
    $findings.ok_after = $findings.ok_before
    if ($findings.ok_before -eq $true) {
        Add-Text -List $Summary.actions -Text ('SYSTEM and NETWORK SERVICE can read {0}: nothing to do' -f $Key.File)
        return
    }
    $denies = @($access.Denies)
    if ($Mode -eq 'grant' -and $denies.Count -gt 0) {
        $Summary.refused = 'deny entries for {0} on {1}: a grant cannot undo a deny (remove-deny does)' -f ($denies -join ', '), $Key.File
        Add-Text -List $Summary.actions -Text ('refused: {0}' -f $Summary.refused)
        return
    }
    if ($Summary.detect_only) {
        Add-Text -List $Summary.actions -Text ('would remove the deny entries [{0}] and grant {1} on {2}' -f ($denies -join ', '), ($KeyGrants -join ' '), $Key.Path)
        return
    }
    $log = New-LogFolder
    $logFile = Join-Path -Path $log -ChildPath 'acl.log'
    # Changed from here on, even if a later icacls fails: takeown has already given the file a new owner.
    $Summary.changed = $true
    $owner = Repair-Acl -Path $Key.Path -Grants $KeyGrants -Denies $denies -LogFolder $log -LogFile $logFile
    if ($owner) {
        $findings.owner = $owner
    }
    $findings.removed_denies = @($denies | Select-Object -First 10)
    $findings.log_path = $log
    $after = Get-KeyAccess -Path $Key.Path
    $findings.ok_after = $after.System -and $after.NetworkService
    # A reboot only helps when the file is readable now.
    $Summary.reboot_required = $findings.ok_after -eq $true
    Add-Text -List $Summary.actions -Text ('removed deny entries [{0}] and granted {1} on {2}; ACL saved in {3}' -f ($denies -join ', '), ($KeyGrants -join ' '), $Key.Path, $log)
}

function Invoke-FolderRepair {
    # Administrators' full control of MachineKeys itself (this folder only, KB 278381).
    param([System.Collections.IDictionary]$Summary)
    $findings = $Summary.findings
    $findings.target = $MachineKeysPath
    $findings.ok_before = Test-FolderAdministrators -Path $MachineKeysPath
    $findings.ok_after = $findings.ok_before
    if ($findings.ok_before -eq $true) {
        Add-Text -List $Summary.actions -Text 'Administrators have full control of MachineKeys: nothing to do'
        return
    }
    if ($Summary.detect_only) {
        Add-Text -List $Summary.actions -Text ('would take ownership of {0} (this folder only) and grant {1}' -f $MachineKeysPath, ($FolderGrants -join ' '))
        return
    }
    $log = New-LogFolder
    # Changed from here on, even if a later icacls fails: takeown has already given the folder a new owner.
    $Summary.changed = $true
    $owner = Repair-Acl -Path $MachineKeysPath -Grants $FolderGrants -Denies @() -LogFolder $log -LogFile (Join-Path -Path $log -ChildPath 'acl.log')
    if ($owner) {
        $findings.owner = $owner
    }
    $findings.log_path = $log
    $findings.ok_after = Test-FolderAdministrators -Path $MachineKeysPath
    $Summary.reboot_required = $findings.ok_after -eq $true
    Add-Text -List $Summary.actions -Text ('took ownership of {0} and granted {1}; ACL saved in {2}' -f $MachineKeysPath, ($FolderGrants -join ' '), $log)
}

function Test-FolderAdministrators {
    # Administrators have full control of the folder itself; $null when its ACL is unreadable.
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
        if ($rule.IdentityReference.Value -ne 'S-1-5-32-544' -or $rule.PropagationFlags.HasFlag([System.Security.AccessControl.PropagationFlags]::InheritOnly)) {
            continue
        }
        if ($rule.AccessControlType -eq 'Deny') {
            return $false
        }
        $allowed = $allowed -bor [int]$rule.FileSystemRights
    }
    ($allowed -band $full) -eq $full
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    refused         = $null
    actions         = New-Object -TypeName 'System.Collections.Generic.List[string]'
    findings        = [ordered]@{ mode = $Mode; target = $null; ok_before = $null; ok_after = $null; removed_denies = @(); log_path = $null; owner = $null }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}

try {
    Write-Step ('{0} on {1}, Mode={2}, DetectOnly={3}' -f $ScriptVersion, $env:COMPUTERNAME, $Mode, $DetectOnly)
    if ($Mode -eq 'folder') {
        Invoke-FolderRepair -Summary $summary
    }
    else {
        $setting = Get-ListenerSetting
        $key = Resolve-ListenerKey -Setting $setting
        $refusal = Get-TargetRefusal -Setting $setting -Key $key
        if ($refusal) {
            $summary.refused = $refusal
            Add-Text -List $summary.actions -Text ('refused: {0}' -f $refusal)
        }
        else {
            $summary.findings.target = $key.Path
            Invoke-KeyRepair -Summary $summary -Key $key
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
