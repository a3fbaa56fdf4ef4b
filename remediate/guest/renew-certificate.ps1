<#
.SYNOPSIS
    Replaces the RDP listener's self-signed certificate when it is expired, expires soon or lost its private key,
    the way Microsoft documents it: remove it, restart the Remote Desktop services, let Windows create a new one.

.DESCRIPTION
    Removes only self-signed certificates in Cert:\LocalMachine\Remote Desktop that are expired, expire within
    ExpiryWarningDays or whose private key is gone. A certificate whose key exists but does not open stays: the
    machine key store is broken and a new certificate would fail the same way. A certificate an administrator pinned
    (SSLCertificateSHA1Hash under the RDP-Tcp key) stays unless it has expired; a pin to an expired or vanished
    certificate is cleared so that the listener falls back to the self-signed one. When the listener's own
    certificate was removed, its pin cleared, or it has none, restarts SessionEnv (which creates the certificate)
    and TermService (which loads it), each stop and start bounded to 60 seconds, and reports the certificate the
    listener then uses. Restarting TermService ends every remote session, so the script refuses while sessions
    exist unless Force is 'true'. Private keys are never deleted. Never touches SecurityLayer, UserAuthentication
    or MinEncryptionLevel (unlike the built-in ResetRDPCert, which turns TLS off).

.PARAMETER DetectOnly
    'true' reports what would be removed and restarted, and changes nothing. Default 'false'.

.PARAMETER Force
    'true' restarts the services even while remote sessions exist (they end). Default 'false'.

.PARAMETER ExpiryWarningDays
    A certificate that expires within this many days is replaced too (proactive renewal). Default 30.

.OUTPUTS
    Progress lines, then one compact JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: a removed self-signed certificate cannot be restored, and need not be: Windows makes a new one. To pin
    a certificate again: Set-CimInstance on Win32_TSGeneralSetting (root\cimv2\TerminalServices) with
    SSLCertificateSHA1Hash = '<thumbprint>'.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false',

    [ValidateSet('true', 'false')]
    [string]$Force = 'false',

    [ValidateRange(0, 3650)]
    [int]$ExpiryWarningDays = 30
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'renew-certificate'
$ScriptVersion = '1.1.0'

$MachineKeysPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto\RSA\MachineKeys'
$RdpTcpKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server\WinStations\RDP-Tcp'
$RdStore = 'Cert:\LocalMachine\Remote Desktop'

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

function Get-PinnedThumbprint {
    # An administrator pins a certificate by setting SSLCertificateSHA1Hash (this registry value); without it the
    # listener uses its self-signed certificate. Windows writes REG_BINARY; a value written by hand may be REG_SZ.
    $value = Get-RegistryValue -Path $RdpTcpKey -Name 'SSLCertificateSHA1Hash' -Default $null
    if ($null -eq $value) {
        return $null
    }
    if ($value -is [byte[]]) {
        $text = [System.BitConverter]::ToString($value) -replace '-', ''
    }
    else {
        # Thumbprints copied from the certificate dialog carry spaces and invisible marks: keep the hex digits.
        $text = ([string]$value) -replace '[^0-9A-Fa-f]', ''
    }
    if (-not $text -or $text -match '^0+$') {
        return $null
    }
    $text.ToUpperInvariant()
}

function Get-RenewalReason {
    # Why a certificate should be replaced, or $null when it should stay.
    param([System.Security.Cryptography.X509Certificates.X509Certificate2]$Certificate, [datetime]$Now, [datetime]$WarnBefore)
    if ($Certificate.NotAfter -le $Now) {
        return 'expired'
    }
    if ($Certificate.NotAfter -le $WarnBefore) {
        return ('expires {0}' -f (Format-UtcTime -Time $Certificate.NotAfter))
    }
    $keyState = Get-PrivateKeyState -Certificate $Certificate -ContainerPath (Get-ListenerKeyContainerPath)
    if ($keyState -ne 'ok') {
        return ('private key ' + $keyState)
    }
    $null
}

function Restart-ServiceWithin {
    # Stops a service and the dependents it has running, then starts it and those dependents again; each wait is
    # bounded, so a service stuck in StopPending (hung sessions) becomes a TimeoutException, not a hang. The
    # dependents are stopped here first because ServiceController.Stop() would wait for them without a limit;
    # a dependent that was not running (stopped or disabled by an administrator) is left as it was.
    param([string]$Name, [TimeSpan]$Timeout)
    $service = Get-Service -Name $Name
    $dependents = @($service.DependentServices | Where-Object { $_.Status -eq 'Running' })
    foreach ($controller in @($dependents) + @($service)) {
        $controller.Refresh()
        if ($controller.Status -ne 'Stopped' -and $controller.Status -ne 'StopPending') {
            $controller.Stop()
        }
        $controller.WaitForStatus('Stopped', $Timeout)
    }
    # DependentServices lists dependents in the reverse of their start order: start them in reverse again.
    [array]::Reverse($dependents)
    foreach ($controller in @($service) + @($dependents)) {
        $controller.Start()
        $controller.WaitForStatus('Running', $Timeout)
    }
}

function Wait-ListenerCertificate {
    # Windows creates the new certificate shortly after the services start: wait until the listener reports one
    # that exists and is none of $Exclude (the one it used before the restart, the ones removed). WMI may fail
    # while TermService starts: that is a reason to ask again, not to stop waiting.
    param([string[]]$Exclude, [int]$TimeoutSeconds)
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ((Get-Date) -lt $deadline) {
        try {
            $thumbprint = Get-ListenerThumbprint
            if ($thumbprint -and $Exclude -notcontains $thumbprint -and $null -ne (Find-Certificate -Thumbprint $thumbprint)) {
                return $thumbprint
            }
        }
        catch {
            Write-Step ('the listener does not answer yet: {0}' -f $_.Exception.Message)
        }
        Start-Sleep -Seconds 2
    }
    $null
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
        removed            = [System.Collections.Generic.List[string]]::new()
        pin_cleared        = $false
        active_sessions    = 0
        services_restarted = $false
        new_certificate    = $null
    }
    errors          = [System.Collections.Generic.List[string]]::new()
}

try {
    $now = Get-Date
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}, Force={3}, ExpiryWarningDays={4}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly, $Force, $ExpiryWarningDays)

    $pinned = Get-PinnedThumbprint
    # Windows creates the Remote Desktop store with its first certificate: a missing store holds none, and the
    # restart below recreates it.
    $certificates = @()
    if (Test-Path -LiteralPath $RdStore) {
        $certificates = @(Get-ChildItem -LiteralPath $RdStore)
    }
    $stale = [System.Collections.Generic.List[object]]::new()
    foreach ($certificate in $certificates) {
        $reason = Get-RenewalReason -Certificate $certificate -Now $now -WarnBefore $now.AddDays($ExpiryWarningDays)
        if ($null -eq $reason) {
            continue
        }
        if ($certificate.Subject -ne $certificate.Issuer) {
            Add-Text -List $summary.errors -Text ('{0}: {1}, but it is not self-signed: left in place' -f $certificate.Thumbprint, $reason)
        }
        elseif ($reason -eq 'private key unreadable') {
            # Windows cannot make a new key in a broken store either: repairing the store is what helps.
            Add-Text -List $summary.errors -Text ('{0}: its private key does not open; a new certificate would fail the same way until the machine key store is repaired (repair-machinekeys, then reset-machinekeys): left in place' -f $certificate.Thumbprint)
        }
        elseif ($certificate.Thumbprint -eq $pinned -and $certificate.NotAfter -gt $now) {
            Add-Text -List $summary.errors -Text ('{0}: {1}, but an administrator pinned it and it has not expired: left in place' -f $certificate.Thumbprint, $reason)
        }
        else {
            $stale.Add(@{ Thumbprint = $certificate.Thumbprint.ToUpperInvariant(); Reason = $reason })
        }
    }

    # A pin to a certificate that expired or no longer exists keeps the listener from using a new one.
    $pinIsStale = $false
    if ($pinned) {
        $pinnedFound = Find-Certificate -Thumbprint $pinned
        $pinIsStale = ($null -eq $pinnedFound) -or ($pinnedFound.Certificate.NotAfter -le $now)
    }
    $listener = Get-ListenerThumbprint
    $listenerFound = $null
    if ($listener) {
        $listenerFound = Find-Certificate -Thumbprint $listener
        $findings.new_certificate = Get-CertificateInfo -Thumbprint $listener -Found $listenerFound -Now $now
    }
    # Only a change to what the listener uses needs the restart (which ends every session): its own certificate
    # removed, its pin cleared, or no certificate at all. Other stale certificates are simply removed.
    $restart = $pinIsStale -or $null -eq $listenerFound -or @($stale | Where-Object { $_.Thumbprint -eq $listener }).Count -gt 0
    $findings.active_sessions = Get-RdpSessionCount
    $refuse = $restart -and $findings.active_sessions -gt 0 -and $Force -ne 'true'

    if ($stale.Count -eq 0 -and -not $restart) {
        Add-Text -List $summary.actions -Text ('the listener certificate {0} is usable until {1}: nothing to do' -f $listener, $findings.new_certificate.not_after)
    }
    elseif ($summary.detect_only) {
        foreach ($entry in $stale) {
            Add-Text -List $summary.actions -Text ('would remove {0} from {1} ({2})' -f $entry.Thumbprint, $RdStore, $entry.Reason)
        }
        if ($pinIsStale) {
            Add-Text -List $summary.actions -Text ('would clear the stale pin to {0}' -f $pinned)
        }
        if ($refuse) {
            Add-Text -List $summary.actions -Text ('would refuse: {0} remote session(s) exist; Force=true would end them' -f $findings.active_sessions)
        }
        elseif ($restart) {
            Add-Text -List $summary.actions -Text 'would restart SessionEnv and TermService so that Windows creates a new certificate'
        }
    }
    elseif ($refuse) {
        Add-Text -List $summary.errors -Text ('refused: {0} remote session(s) exist and restarting TermService would end them; run again with Force=true' -f $findings.active_sessions)
    }
    else {
        foreach ($entry in $stale) {
            Remove-Item -LiteralPath (Join-Path -Path 'Cert:\LocalMachine\Remote Desktop' -ChildPath $entry.Thumbprint)
            $findings.removed.Add($entry.Thumbprint)
            $summary.changed = $true
            Add-Text -List $summary.actions -Text ('removed {0} from {1} ({2})' -f $entry.Thumbprint, $RdStore, $entry.Reason)
        }
        if ($pinIsStale) {
            Remove-ItemProperty -LiteralPath $RdpTcpKey -Name 'SSLCertificateSHA1Hash'
            $findings.pin_cleared = $true
            $summary.changed = $true
            Add-Text -List $summary.actions -Text ('cleared the stale pin to {0}' -f $pinned)
        }
        if ($restart) {
            Write-Step 'restarting SessionEnv and TermService'
            $summary.changed = $true
            $findings.new_certificate = $null
            $timeout = [TimeSpan]::FromSeconds(60)
            $restarted = $true
            foreach ($name in @('SessionEnv', 'TermService')) {
                try {
                    Restart-ServiceWithin -Name $name -Timeout $timeout
                }
                catch [System.ServiceProcess.TimeoutException] {
                    Add-Text -List $summary.errors -Text ('{0} or a service depending on it did not stop or start within 60 seconds (hung sessions can hold TermService in StopPending): check the Remote Desktop services, or reboot' -f $name)
                    $restarted = $false
                    break
                }
            }
            $findings.services_restarted = $restarted
        }
        if ($findings.services_restarted) {
            Add-Text -List $summary.actions -Text 'restarted SessionEnv and TermService'
            $exclude = @($findings.removed)
            if ($listener) {
                $exclude += $listener
            }
            $current = Wait-ListenerCertificate -Exclude $exclude -TimeoutSeconds 60
            if ($current) {
                $findings.new_certificate = Get-CertificateInfo -Thumbprint $current -Found (Find-Certificate -Thumbprint $current) -Now (Get-Date)
                Add-Text -List $summary.actions -Text ('the listener now uses {0}, valid until {1}' -f $current, $findings.new_certificate.not_after)
            }
            else {
                Add-Text -List $summary.errors -Text 'Windows did not create a new certificate within 60 seconds (see events 1057 and 1058): repair the machine key store, then run this again'
            }
        }
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
Write-Summary -Summary $summary
