<#
.SYNOPSIS
    The last resort for a corrupt machine key store: renames MachineKeys to a timestamped backup and recreates it
    empty with Windows' default permissions, so that Windows makes new keys and a new RDP certificate at the next
    boot.

.DESCRIPTION
    Renames C:\ProgramData\Microsoft\Crypto\RSA\MachineKeys to MachineKeys.<yyyyMMddTHHmmssZ>.rdp-remediate.bak
    in the same folder (never deleted; a timestamp, not "_old", so a second run never collides) and recreates
    MachineKeys with its default security descriptor O:SYG:SYD:PAI(A;;0x12019f;;;WD)(A;;FA;;;BA).
    If the new folder cannot be created or given those permissions, it is renamed aside
    (MachineKeys.<stamp>.rdp-remediate.failed) and the backup renamed back at once.
    This also sets aside every other machine key (IIS, SQL Server, extensions' protected settings): use it only
    when repairing the permissions did not help. A reboot is required.

.PARAMETER DetectOnly
    'true' reports what would be renamed and changes nothing. Default 'false'.

.OUTPUTS
    Progress lines, then one compact JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: stop the services using machine keys (or boot into safe mode), rename the new MachineKeys aside, rename
    the backup back to MachineKeys, and reboot.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'reset-machinekeys'
$ScriptVersion = '1.1.0'

$MachineKeysPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto\RSA\MachineKeys'
# Owner SYSTEM; Everyone may list and add keys (this folder only); Administrators full control; not inherited.
$DefaultMachineKeysSddl = 'O:SYG:SYD:PAI(A;;0x12019f;;;WD)(A;;FA;;;BA)'

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

function Get-TimeStamp {
    # UTC, sortable, safe in file names: 20261123T100000Z.
    (Get-Date).ToUniversalTime().ToString("yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture)
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

function Undo-Rename {
    # Puts the backup back as MachineKeys. A new folder that was created (with the wrong permissions) is renamed
    # aside, never deleted. Updates the summary: afterwards the machine has its original key store again, and
    # has changed only if that new folder is left beside it.
    param([string]$BackupName, [string]$FailedName)
    $rsaFolder = Split-Path -Path $MachineKeysPath -Parent
    $leftOver = Test-Path -LiteralPath $MachineKeysPath
    if ($leftOver) {
        Rename-Item -LiteralPath $MachineKeysPath -NewName $FailedName
        Add-Text -List $summary.actions -Text ('renamed the new, incomplete {0} to {1}' -f $MachineKeysPath, $FailedName)
    }
    Rename-Item -LiteralPath (Join-Path -Path $rsaFolder -ChildPath $BackupName) -NewName 'MachineKeys'
    $summary.findings.renamed = $false
    $summary.findings.backup_path = $null
    $summary.changed = $leftOver
    $summary.reboot_required = $false
    Add-Text -List $summary.actions -Text ('renamed the backup {0} back to MachineKeys: the original key store is in place' -f $BackupName)
}

$summary = [ordered]@{
    script          = $ScriptName
    version         = $ScriptVersion
    detect_only     = ($DetectOnly -eq 'true')
    changed         = $false
    reboot_required = $false
    actions         = [System.Collections.Generic.List[string]]::new()
    findings        = [ordered]@{ renamed = $false; backup_path = $null }
    errors          = [System.Collections.Generic.List[string]]::new()
}

try {
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly)
    $stamp = Get-TimeStamp
    $rsaFolder = Split-Path -Path $MachineKeysPath -Parent
    $backupName = 'MachineKeys.{0}.rdp-remediate.bak' -f $stamp
    $backupPath = Join-Path -Path $rsaFolder -ChildPath $backupName
    if (Test-Path -LiteralPath $backupPath) {
        throw ('{0} already exists: run again in a second' -f $backupPath)
    }
    $exists = Test-Path -LiteralPath $MachineKeysPath

    if ($summary.detect_only) {
        if ($exists) {
            Add-Text -List $summary.actions -Text ('would rename {0} to {1} and keep it as the backup' -f $MachineKeysPath, $backupName)
        }
        Add-Text -List $summary.actions -Text ('would create an empty {0} with the default permissions; a reboot would follow' -f $MachineKeysPath)
    }
    else {
        if ($exists) {
            Write-Step ('renaming {0} to {1}' -f $MachineKeysPath, $backupName)
            Rename-Item -LiteralPath $MachineKeysPath -NewName $backupName
            $findings.renamed = $true
            $findings.backup_path = $backupPath
            $summary.changed = $true
            $summary.reboot_required = $true
            Add-Text -List $summary.actions -Text ('renamed {0} to {1} (the backup)' -f $MachineKeysPath, $backupName)
        }
        try {
            $null = New-Item -ItemType Directory -Path $MachineKeysPath
            $acl = Get-Acl -LiteralPath $MachineKeysPath
            $acl.SetSecurityDescriptorSddlForm($DefaultMachineKeysSddl)
            Set-Acl -LiteralPath $MachineKeysPath -AclObject $acl
            $summary.changed = $true
            $summary.reboot_required = $true
            Add-Text -List $summary.actions -Text ('created an empty {0} with the default permissions; reboot so that Windows creates new keys and a new RDP certificate' -f $MachineKeysPath)
        }
        catch {
            # Never leave the machine without its key store, nor with a new one whose permissions are wrong: put
            # the original back. The error is recorded first, so that a failing rollback cannot hide it.
            Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
            if ($findings.renamed) {
                Undo-Rename -BackupName $backupName -FailedName ('MachineKeys.{0}.rdp-remediate.failed' -f $stamp)
            }
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
