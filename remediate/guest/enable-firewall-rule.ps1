<#
.SYNOPSIS
    Enables the built-in "Remote Desktop - User Mode" firewall rules when RDP is not allowed in, as Microsoft
    documents it, and nothing else.

.DESCRIPTION
    RDP gets through the Windows firewall on a profile when the rule RemoteDesktop-UserMode-In-TCP ("Remote
    Desktop - User Mode (TCP-In)") is enabled and in effect for it: every connection starts over TCP, UDP only
    accelerates one. Rules are selected by Name, which is not localized. When the TCP rule is not in effect on
    every profile, the script enables that one rule and nothing else: not the UDP rule (an administrator may have
    turned RDP over UDP off on purpose, and RDP works without it), not the group's other rules (Shadow lets an
    administrator watch or control sessions), never the firewall or a profile, never a rule's profiles or
    addresses, never a new rule.
    Reports, per profile (Domain, Private, Public), whether the TCP rule is in effect before and after; a Group
    Policy that disables it wins, and the script says so. No reboot is required.

.PARAMETER DetectOnly
    'true' reports what would be enabled and changes nothing. Default 'false'.

.OUTPUTS
    Progress lines, then one compact JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: Disable-NetFirewallRule -Name <the rule names listed in the actions>.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'enable-firewall-rule'
$ScriptVersion = '1.1.0'

# The built-in Remote Desktop User Mode TCP rule by Name, which is not localized (display names are). It alone
# decides whether RDP gets through; the UDP rule and the group's Shadow rule are deliberately left alone.
$RdpTcpRule = 'RemoteDesktop-UserMode-In-TCP'

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
        before = [ordered]@{ Domain = $false; Private = $false; Public = $false }
        after  = [ordered]@{ Domain = $false; Private = $false; Public = $false }
    }
    errors          = [System.Collections.Generic.List[string]]::new()
}

try {
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly)
    $findings.before = Get-RdpRuleProfileState
    $findings.after = $findings.before
    # The TCP rule if it is disabled in the local store (a missing one is not an error: it cannot be enabled).
    $names = @(Get-NetFirewallRule -Name $RdpTcpRule -ErrorAction SilentlyContinue | Where-Object { [string]$_.Enabled -ne 'True' } | ForEach-Object { $_.Name })

    if ($findings.before.Values -notcontains $false) {
        Add-Text -List $summary.actions -Text 'the Remote Desktop User Mode (TCP-In) rule is in effect on every profile: nothing to do'
    }
    elseif ($names -notcontains $RdpTcpRule) {
        # Enabled locally yet not in effect: a policy or the rule's profiles block it, which is theirs to decide.
        Add-Text -List $summary.errors -Text 'the Remote Desktop User Mode (TCP-In) rule is enabled locally (or missing) but not in effect on every profile: a Group Policy or the rule''s profile settings decide; left as configured'
    }
    elseif ($summary.detect_only) {
        foreach ($name in $names) {
            Add-Text -List $summary.actions -Text ('would enable {0}' -f $name)
        }
    }
    else {
        Enable-NetFirewallRule -Name $names
        $summary.changed = $true
        foreach ($name in $names) {
            Add-Text -List $summary.actions -Text ('enabled {0}' -f $name)
        }
        $findings.after = Get-RdpRuleProfileState
        if ($findings.after.Values -contains $false) {
            Add-Text -List $summary.errors -Text 'the Remote Desktop User Mode (TCP-In) rule is still not in effect on every profile: a Group Policy or the rule''s profile settings decide'
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
