<#
.SYNOPSIS
    Enables the built-in "Remote Desktop" firewall rule group, as Microsoft documents it.

.DESCRIPTION
    Enable-NetFirewallRule on the group @FirewallAPI.dll,-28752 (its resource string: the display name "Remote
    Desktop" is localized). Enables rules only: never disables the firewall or a profile, never adds a rule, never
    changes a rule's profiles or addresses. Reports, per profile (Domain, Private, Public), whether an enabled
    inbound rule of the group is in effect before and after; a Group Policy that disables the rules wins, and the
    script says so. No reboot is required.

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
$ScriptVersion = '1.0.0'

# The built-in "Remote Desktop" rule group by its resource string: the display name is localized.
$RdpRuleGroup = '@FirewallAPI.dll,-28752'

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
    $disabled = @(Get-NetFirewallRule -Group $RdpRuleGroup -Direction Inbound | Where-Object { [string]$_.Enabled -ne 'True' })

    if ($findings.before.Values -notcontains $false) {
        Add-Text -List $summary.actions -Text 'the Remote Desktop rules are in effect on every profile: nothing to do'
    }
    elseif ($disabled.Count -eq 0) {
        Add-Text -List $summary.errors -Text 'the Remote Desktop rules are enabled locally but not in effect on every profile: a Group Policy or the rules'' profile settings decide; left as configured'
    }
    elseif ($summary.detect_only) {
        foreach ($rule in $disabled) {
            Add-Text -List $summary.actions -Text ('would enable {0}' -f $rule.Name)
        }
    }
    else {
        $disabled | Enable-NetFirewallRule
        $summary.changed = $true
        foreach ($rule in $disabled) {
            Add-Text -List $summary.actions -Text ('enabled {0}' -f $rule.Name)
        }
        $findings.after = Get-RdpRuleProfileState
        if ($findings.after.Values -contains $false) {
            Add-Text -List $summary.errors -Text 'the Remote Desktop rules are still not in effect on every profile: a Group Policy or the rules'' profile settings decide'
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text ('{0} (line {1})' -f $_.Exception.Message, $_.InvocationInfo.ScriptLineNumber)
}
Write-Summary -Summary $summary
