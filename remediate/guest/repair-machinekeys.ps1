<#
.SYNOPSIS
    Repairs the permissions of the machine key store the way Microsoft documents it, so that the RDP listener can
    use its certificate's private key again (events 1057, 1058 "Access is denied", 36870).

.DESCRIPTION
    Targeted first: the listener's key container (TSSecKeySet1 in MachineKeys), then the MachineKeys folder itself,
    each only when its permissions are wrong (an ACL SYSTEM may not even read is wrong). For each: save the
    current ACL (icacls /save), take ownership (takeown, as SYSTEM, the default owner), then grant by SID, because
    account names are localized: SYSTEM (*S-1-5-18), NETWORK SERVICE (*S-1-5-20) and Administrators
    (*S-1-5-32-544). When the ACL cannot be read (no entry for SYSTEM, another owner), ownership comes first,
    since the owner may always read and change the ACL; then the save and the grants.
    Never recursive: granting NETWORK SERVICE read on every machine key (icacls /t) would hand other services'
    private keys to any NETWORK SERVICE process. The before and after ACLs are logged under
    C:\ProgramData\rdp-remediate\<time>-repair-machinekeys\. A reboot is required.

.PARAMETER DetectOnly
    'true' reports what would be repaired and changes nothing. Default 'false'.

.OUTPUTS
    Progress lines, then one compact JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: icacls "<parent folder>" /restore "<log folder>\<name>.acl" restores a saved ACL; the log's acl.log
    holds the previous owner and ACL in SDDL (or says the ACL was unreadable before ownership was taken).
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'repair-machinekeys'
$ScriptVersion = '1.1.0'

$MachineKeysPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto\RSA\MachineKeys'
# Windows' default rights: Administrators own the folder; SYSTEM owns the listener's key, NETWORK SERVICE reads it.
$FolderRights = @{ 'S-1-5-32-544' = 'FullControl' }
$ContainerRights = @{ 'S-1-5-18' = 'FullControl'; 'S-1-5-20' = 'Read' }
# Microsoft's documented grants, by SID.
$FolderGrants = @('*S-1-5-18:(F)', '*S-1-5-20:(R)', '*S-1-5-32-544:(F)')
$ContainerGrants = @('*S-1-5-18:(F)', '*S-1-5-20:(R)', '*S-1-5-32-544:(R)')

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

function Get-RegistryValue {
    # A registry value, or $Default when the key or the value does not exist.
    param([string]$Path, [string]$Name, [object]$Default)
    $item = Get-ItemProperty -LiteralPath $Path -Name $Name -ErrorAction SilentlyContinue
    if ($null -eq $item) {
        return $Default
    }
    $item.$Name
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

function Get-TimeStamp {
    # UTC, sortable, safe in file names: 20261123T100000Z.
    (Get-Date).ToUniversalTime().ToString("yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture)
}

function Assert-ExitCode {
    # Windows tools report failure only through their exit code: turn it into an error.
    param([string]$Tool, [object[]]$Output)
    if ($LASTEXITCODE -ne 0) {
        throw ('{0} failed with exit code {1}: {2}' -f $Tool, $LASTEXITCODE, ($Output -join ' '))
    }
}

function Save-AclSnapshot {
    # Owner and permissions of each path, in SDDL, appended to the log; an ACL this account may not read is
    # logged as such (taking ownership makes it readable).
    param([string[]]$Paths, [string]$File, [string]$Label)
    foreach ($item in $Paths) {
        try {
            $sddl = (Get-Acl -LiteralPath $item).Sddl
        }
        catch [System.UnauthorizedAccessException] {
            $sddl = 'ACL unreadable: ' + $_.Exception.Message
        }
        Add-Content -LiteralPath $File -Value ('{0} {1}: {2}' -f $Label, $item, $sddl)
    }
}

function Repair-Acl {
    # One file or folder, never recursive: save its ACL for icacls /restore, take ownership, grant by SID. When
    # even the save is denied (no entry for SYSTEM, another owner), ownership comes first: the owner may always
    # read and change the ACL, so the save then works.
    param([string]$Path, [string[]]$Grants, [string]$LogFolder, [string]$LogFile)
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
    $output = icacls.exe $Path /grant $Grants
    Assert-ExitCode -Tool 'icacls /grant' -Output $output
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

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    actions         = [System.Collections.Generic.List[string]]::new()
    findings        = [ordered]@{
        key_container               = $null
        key_container_acl_ok_before = $null
        key_container_acl_ok_after  = $null
        folder_acl_ok_before        = $false
        folder_acl_ok_after         = $false
        log_path                    = $null
    }
    errors          = [System.Collections.Generic.List[string]]::new()
}

try {
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly)
    if (-not (Test-Path -LiteralPath $MachineKeysPath)) {
        throw ('{0} does not exist: reset-machinekeys recreates it' -f $MachineKeysPath)
    }
    $container = Get-ListenerKeyContainerPath
    if ($container -and -not (Test-Path -LiteralPath $container)) {
        $container = $null
    }
    $findings.folder_acl_ok_before = Test-AclGrants -Path $MachineKeysPath -Required $FolderRights
    $findings.folder_acl_ok_after = $findings.folder_acl_ok_before
    if ($container) {
        $findings.key_container = Split-Path -Path $container -Leaf
        $findings.key_container_acl_ok_before = Test-AclGrants -Path $container -Required $ContainerRights
        $findings.key_container_acl_ok_after = $findings.key_container_acl_ok_before
    }
    $repairContainer = $findings.key_container_acl_ok_before -eq $false
    $repairFolder = -not $findings.folder_acl_ok_before

    if (-not $repairContainer -and -not $repairFolder) {
        Add-Text -List $summary.actions -Text 'MachineKeys and the listener key container have the required permissions: nothing to do'
    }
    elseif ($summary.detect_only) {
        if ($repairContainer) {
            Add-Text -List $summary.actions -Text ('would take ownership of {0} and grant {1}' -f $container, ($ContainerGrants -join ' '))
        }
        if ($repairFolder) {
            Add-Text -List $summary.actions -Text ('would take ownership of {0} and grant {1}' -f $MachineKeysPath, ($FolderGrants -join ' '))
        }
    }
    else {
        $logFolder = Join-Path -Path $env:ProgramData -ChildPath ('rdp-remediate\{0}-repair-machinekeys' -f (Get-TimeStamp))
        $null = New-Item -ItemType Directory -Path $logFolder -Force
        $findings.log_path = $logFolder
        $logFile = Join-Path -Path $logFolder -ChildPath 'acl.log'
        $paths = @($MachineKeysPath)
        if ($container) {
            $paths += $container
        }
        Save-AclSnapshot -Paths $paths -File $logFile -Label 'before'
        if ($repairContainer) {
            Write-Step ('repairing {0}' -f $container)
            Repair-Acl -Path $container -Grants $ContainerGrants -LogFolder $logFolder -LogFile $logFile
            $summary.changed = $true
            $summary.reboot_required = $true
            Add-Text -List $summary.actions -Text ('took ownership of {0} and granted {1}' -f $container, ($ContainerGrants -join ' '))
            $findings.key_container_acl_ok_after = Test-AclGrants -Path $container -Required $ContainerRights
        }
        if ($repairFolder) {
            Write-Step ('repairing {0}' -f $MachineKeysPath)
            Repair-Acl -Path $MachineKeysPath -Grants $FolderGrants -LogFolder $logFolder -LogFile $logFile
            $summary.changed = $true
            $summary.reboot_required = $true
            Add-Text -List $summary.actions -Text ('took ownership of {0} and granted {1}' -f $MachineKeysPath, ($FolderGrants -join ' '))
            $findings.folder_acl_ok_after = Test-AclGrants -Path $MachineKeysPath -Required $FolderRights
        }
        Save-AclSnapshot -Paths $paths -File $logFile -Label 'after'
        Add-Text -List $summary.actions -Text ('logged the ACLs before and after in {0}; reboot to apply' -f $logFolder)
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
