<#
.SYNOPSIS
    Renews Windows' own RDP certificate (SSLCertificateSHA1HashType 1) the way Microsoft documents it, or
    re-pins a custom listener certificate (HashType 3) to the successor the engine names.

.DESCRIPTION
    Acts only on the certificate named by Thumbprint, and first re-checks what the engine was told: the
    listener still uses that certificate; without Successor, it is Windows' own (HashType 1) and no remote
    session (logon types 10 and 12) exists unless Force is 'true'; with Successor, the listener is pinned in the
    registry (not by Group Policy) to a custom certificate (HashType 3) and the successor is in
    Cert:\LocalMachine\My, valid now, for server authentication, with a key NETWORK SERVICE may read. When a
    precondition no longer holds it reports `refused` with the reason and changes nothing.
    Renewal: removes the certificate from Cert:\LocalMachine\Remote Desktop, restarts SessionEnv (which creates
    the new certificate) and waits up to 60 seconds for the listener to report it; only when it does not is
    TermService restarted too and waited for again. Every stop and start is bounded; a service this script
    stopped is started again in finally. Re-pin: sets SSLCertificateSHA1Hash on Win32_TSGeneralSetting.
    Never touches SecurityLayer, UserAuthentication or MinEncryptionLevel (unlike the built-in ResetRDPCert).

.PARAMETER DetectOnly
    'true' reports what would be done and changes nothing. Default 'false'.

.PARAMETER Force
    'true' restarts SessionEnv even while remote sessions exist. Default 'false'.

.PARAMETER Thumbprint
    The listener's certificate the engine decided about (40 hex digits; '' when the listener has none).

.PARAMETER Successor
    For a custom certificate: the certificate in LocalMachine\My to pin instead (40 hex digits). Default ''.

.PARAMETER KeyFile
    Windows' own certificate only: its key file, to set aside (rename to <file>.<stamp>.rdp-remediate.bak) after
    the session check and before the renewal, in this one Run Command. Default '' (no set-aside).

.OUTPUTS
    Progress lines, then one compact ASCII JSON line: the rdp-remediate guest summary (contract.schema.json).

.NOTES
    Undo: a removed self-signed certificate need not be restored: Windows makes a new one. A re-pin is undone by
    setting SSLCertificateSHA1Hash back to the old thumbprint (reported in findings.thumbprint). A key set aside
    is renamed back from findings.set_aside (drop the .<stamp>.rdp-remediate.bak suffix) once nothing uses the
    new key.
#>
#Requires -Version 5.1
[CmdletBinding()]
param(
    [ValidateSet('true', 'false')]
    [string]$DetectOnly = 'false',

    [ValidateSet('true', 'false')]
    [string]$Force = 'false',

    [ValidatePattern('^([0-9A-Fa-f]{40})?$')]
    [string]$Thumbprint = '',

    [ValidatePattern('^([0-9A-Fa-f]{40})?$')]
    [string]$Successor = '',

    [ValidatePattern('^([0-9A-Za-z_.-]{1,200})?$')]
    [string]$KeyFile = ''
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ScriptName = 'renew-certificate'
$ScriptVersion = '2.0.0'

$CimTimeoutSeconds = 20
$CryptoPath = Join-Path -Path $env:ProgramData -ChildPath 'Microsoft\Crypto'
$MachineKeysPath = Join-Path -Path $CryptoPath -ChildPath 'RSA\MachineKeys'
$CngKeysPath = Join-Path -Path $CryptoPath -ChildPath 'Keys'
$RdpTcpKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server\WinStations\RDP-Tcp'
$RdpPolicyKey = 'HKLM:\SOFTWARE\Policies\Microsoft\Windows NT\Terminal Services'
$RdStore = 'Cert:\LocalMachine\Remote Desktop'
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

function Restart-ServiceWithin {
    # Stops a service and the dependents it has running, then starts it and those dependents again; each wait is
    # bounded, so a service stuck in StopPending (hung sessions) becomes a TimeoutException, not a hang. The
    # dependents are stopped here first because ServiceController.Stop() would wait for them without a limit;
    # a dependent that was not running (stopped or disabled by an administrator) is left as it was. Every
    # service stopped here is named in $Stopped, so that the caller's finally starts it again whatever fails.
    param([string]$Name, [TimeSpan]$Timeout, [System.Collections.Generic.List[string]]$Stopped)
    $service = Get-Service -Name $Name
    $dependents = @($service.DependentServices | Where-Object { $_.Status -eq 'Running' })
    foreach ($controller in @($dependents) + @($service)) {
        $controller.Refresh()
        if ($controller.Status -ne 'Stopped' -and $controller.Status -ne 'StopPending') {
            $Stopped.Add($controller.ServiceName)
            $controller.Stop()
        }
        $controller.WaitForStatus('Stopped', $Timeout)
    }
    # DependentServices lists dependents in the reverse of their start order: start them in reverse again.
    [array]::Reverse($dependents)
    foreach ($controller in @($service) + @($dependents)) {
        $controller.Start()
        $controller.WaitForStatus('Running', $Timeout)
        $null = $Stopped.Remove($controller.ServiceName)
    }
}

function Restore-Services {
    # Runs in finally: every service this script stopped and did not start again is started, each wait bounded.
    # Start() on a service still in StopPending throws, so it first waits (bounded) for Stopped; a service that
    # does not stop or start in time is recorded and a reboot is reported as needed. Never throws, so the summary
    # is still printed.
    param([System.Collections.Generic.List[string]]$Stopped, [System.Collections.IDictionary]$Summary)
    $timeout = New-TimeSpan -Seconds 60
    foreach ($name in @($Stopped)) {
        try {
            $controller = Get-Service -Name $name
            if ($controller.Status -eq 'StopPending') {
                $controller.WaitForStatus('Stopped', $timeout)
            }
            if ($controller.Status -ne 'Running') {
                $controller.Start()
                $controller.WaitForStatus('Running', $timeout)
            }
        }
        catch [System.ServiceProcess.TimeoutException] {
            $Summary.reboot_required = $true
            Add-Text -List $Summary.errors -Text ('{0} did not stop or start again within 60 s: a reboot is needed' -f $name)
        }
        catch {
            $Summary.reboot_required = $true
            Add-Text -List $Summary.errors -Text ('{0} did not start again: {1}; a reboot is needed' -f $name, (Format-ErrorText -Record $_))
        }
    }
}

function Wait-ListenerCertificate {
    # Windows creates the new certificate shortly after SessionEnv starts: wait until the listener reports one
    # that exists and is none of $Exclude (the one it used before the restart). WMI may fail while the services
    # start: that is a reason to ask again, not to stop waiting.
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
    ''
}

function Get-Refusal {
    # Why the script must not act on the facts it was given; '' when they still hold.
    param([string]$Named, [string]$Current, [int64]$HashType, [int]$Sessions)
    if ($Current -ne $Named) {
        return ('the listener uses {0}, not {1}: the facts changed since the engine decided' -f $Current, $Named)
    }
    if ($Successor) {
        return Get-RepinRefusal -HashType $HashType
    }
    if ($Current -and $HashType -ne 1) {
        return ('{0} is not Windows'' own certificate (HashType {1}): not removed' -f $Current, $HashType)
    }
    if ($Sessions -lt 0 -and $Force -ne 'true') {
        return 'the remote sessions could not be counted: restarting SessionEnv is not risked without Force'
    }
    if ($Sessions -gt 0 -and $Force -ne 'true') {
        return ('{0} remote session(s) (logon types 10 and 12): restarting SessionEnv is not risked without Force' -f $Sessions)
    }
    ''
}

function Get-RepinRefusal {
    # A re-pin needs a registry-pinned custom certificate and a valid successor whose key NETWORK SERVICE reads.
    param([int64]$HashType)
    if ($HashType -ne 3) {
        return ('the listener''s certificate is not a custom one (HashType {0}): not re-pinned' -f $HashType)
    }
    if ($null -ne (Get-RegistryValue -Path $RdpPolicyKey -Name 'SSLCertificateSHA1Hash' -Default $null)) {
        return 'Group Policy pins the listener''s certificate: its owner re-pins it'
    }
    $path = Join-Path -Path 'Cert:\LocalMachine\My' -ChildPath $Successor
    if (-not (Test-Path -LiteralPath $path)) {
        return ('{0} is not in Cert:\LocalMachine\My' -f $Successor)
    }
    $candidate = Get-Item -LiteralPath $path
    $now = Get-Date
    if ($candidate.NotBefore -gt $now -or $candidate.NotAfter -le $now) {
        return ('{0} is not valid now' -f $Successor)
    }
    $usages = @($candidate.EnhancedKeyUsageList | ForEach-Object { $_.ObjectId })
    if ($usages -notcontains '1.3.6.1.5.5.7.3.1' -and $usages -notcontains '1.3.6.1.4.1.311.54.1.2') {
        return ('{0} is not for server authentication (EKU 1.3.6.1.5.5.7.3.1)' -f $Successor)
    }
    $current = Find-Certificate -Thumbprint $Thumbprint.ToUpperInvariant()
    if ($null -ne $current -and $candidate.Subject -ne $current.Certificate.Subject) {
        return ('{0} has another subject than the listener''s certificate' -f $Successor)
    }
    $key = Resolve-KeyFile -Certificate $candidate -WindowsOwn $false
    if ($null -eq $key.Path -or (Get-KeyAccess -Path $key.Path).NetworkService -ne $true) {
        return ('NETWORK SERVICE cannot read the key of {0}' -f $Successor)
    }
    ''
}

function Get-SetAsideRefusal {
    # The key file named for setting aside is the key of the listener's certificate, Windows' own; '' when so.
    param([string]$Current, [int64]$HashType)
    if ($HashType -ne 1) {
        return ('{0} is not Windows'' own certificate (HashType {1}): its key stays' -f $Current, $HashType)
    }
    $found = Find-Certificate -Thumbprint $Current
    if ($null -eq $found) {
        return ('{0} is in no certificate store: no key to set aside' -f $Current)
    }
    $key = Resolve-KeyFile -Certificate $found.Certificate -WindowsOwn ($found.Store -eq $RdStore)
    if ($key.File -ne $KeyFile -or -not (Test-Path -LiteralPath $key.Path)) {
        return ('{0} is not the key file of {1}' -f $KeyFile, $Current)
    }
    ''
}

function Invoke-SetAside {
    # Rename the listener's key file aside (never delete it), so that the renewal makes a new key.
    param([System.Collections.IDictionary]$Summary)
    $path = Join-Path -Path $MachineKeysPath -ChildPath $KeyFile
    $backup = '{0}.{1}.rdp-remediate.bak' -f $KeyFile, (Get-Date).ToUniversalTime().ToString("yyyyMMdd'T'HHmmss'Z'", [System.Globalization.CultureInfo]::InvariantCulture)
    if ($Summary.detect_only) {
        Add-Text -List $Summary.actions -Text ('would rename {0} to {1}' -f $path, $backup)
        return
    }
    $Summary.changed = $true
    Rename-Item -LiteralPath $path -NewName $backup
    $Summary.findings.set_aside = Join-Path -Path $MachineKeysPath -ChildPath $backup
    Add-Text -List $Summary.actions -Text ('renamed {0} to {1} (set aside, not deleted)' -f $path, $backup)
}

function Invoke-Renewal {
    # Remove Windows' own certificate, restart SessionEnv, wait for the new one; TermService only if needed.
    param([System.Collections.IDictionary]$Summary, [string]$Current, [System.Collections.Generic.List[string]]$Stopped)
    $findings = $Summary.findings
    if ($Summary.detect_only) {
        if ($Current) {
            Add-Text -List $Summary.actions -Text ('would remove {0} from {1}' -f $Current, $RdStore)
        }
        Add-Text -List $Summary.actions -Text 'would restart SessionEnv and wait up to 60 s for the new certificate (TermService only if the listener does not take it)'
        return
    }
    $timeout = New-TimeSpan -Seconds 60
    if ($Current -and (Test-Path -LiteralPath (Join-Path -Path $RdStore -ChildPath $Current))) {
        Remove-Item -LiteralPath (Join-Path -Path 'Cert:\LocalMachine\Remote Desktop' -ChildPath $Current)
        $findings.removed = $Current
        $Summary.changed = $true
        Add-Text -List $Summary.actions -Text ('removed {0} from {1}' -f $Current, $RdStore)
    }
    Write-Step 'restarting SessionEnv'
    $Summary.changed = $true
    Restart-ServiceWithin -Name 'SessionEnv' -Timeout $timeout -Stopped $Stopped
    $findings.restarted.Add('SessionEnv')
    Add-Text -List $Summary.actions -Text 'restarted SessionEnv'
    $new = Wait-ListenerCertificate -Exclude @($Current) -TimeoutSeconds 60
    if (-not $new) {
        Write-Step 'the listener did not take a new certificate: restarting TermService'
        Restart-ServiceWithin -Name 'TermService' -Timeout $timeout -Stopped $Stopped
        $findings.restarted.Add('TermService')
        Add-Text -List $Summary.actions -Text 'restarted TermService (the listener had not taken the new certificate)'
        $new = Wait-ListenerCertificate -Exclude @($Current) -TimeoutSeconds 60
    }
    if ($new) {
        $findings.listener = $new
        Add-Text -List $Summary.actions -Text ('the listener now uses {0}' -f $new)
    }
    else {
        $findings.listener = $null
        $Summary.reboot_required = $true
        Add-Text -List $Summary.errors -Text 'Windows did not create a new certificate within 60 s (see events 1057, 1058)'
    }
}

function Invoke-Repin {
    # Pin the listener to the successor (SSLCertificateSHA1Hash on Win32_TSGeneralSetting), within the CIM limit.
    param([System.Collections.IDictionary]$Summary, [string]$Current)
    $findings = $Summary.findings
    $target = $Successor.ToUpperInvariant()
    if ($Summary.detect_only) {
        Add-Text -List $Summary.actions -Text ('would set SSLCertificateSHA1Hash to {0} (now {1})' -f $target, $Current)
        return
    }
    $setting = Get-ListenerSetting
    Set-CimInstance -InputObject $setting -Property @{ SSLCertificateSHA1Hash = $target } -OperationTimeoutSec $CimTimeoutSeconds
    $findings.pinned = $target
    $findings.listener = Get-ListenerThumbprint
    $Summary.changed = $true
    Add-Text -List $Summary.actions -Text ('set SSLCertificateSHA1Hash to {0} (was {1})' -f $target, $Current)
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
        thumbprint = $null
        removed    = $null
        pinned     = $null
        sessions   = 0
        restarted  = New-Object -TypeName 'System.Collections.Generic.List[string]'
        listener   = $null
        set_aside  = $null
    }
    errors          = New-Object -TypeName 'System.Collections.Generic.List[string]'
}
$stopped = New-Object -TypeName 'System.Collections.Generic.List[string]'

try {
    $findings = $summary.findings
    Write-Step ('{0} on {1}, DetectOnly={2}' -f $ScriptVersion, $env:COMPUTERNAME, $DetectOnly)
    $named = $Thumbprint.ToUpperInvariant()
    if ($named) {
        $findings.thumbprint = $named
    }
    $setting = Get-ListenerSetting
    $current = Get-ListenerThumbprint
    if ($current) {
        $findings.listener = $current
    }
    $sessionCount = -1
    try {
        $sessionCount = (Get-RdpSessionCount -LogonType 10) + (Get-RdpSessionCount -LogonType 12)
        $findings.sessions = $sessionCount
    }
    catch {
        $findings.sessions = $null
        Add-Text -List $summary.errors -Text ('sessions: {0}' -f (Format-ErrorText -Record $_))
    }
    $refusal = Get-Refusal -Named $named -Current $current -HashType ([int64]$setting.SSLCertificateSHA1HashType) -Sessions $sessionCount
    if (-not $refusal -and $KeyFile) {
        $refusal = Get-SetAsideRefusal -Current $current -HashType ([int64]$setting.SSLCertificateSHA1HashType)
    }
    if ($refusal) {
        $summary.refused = $refusal
        Add-Text -List $summary.actions -Text ('refused: {0}' -f $refusal)
    }
    elseif ($Successor) {
        Invoke-Repin -Summary $summary -Current $current
    }
    else {
        if ($KeyFile) {
            Invoke-SetAside -Summary $summary
        }
        Invoke-Renewal -Summary $summary -Current $current -Stopped $stopped
    }
}
catch {
    Add-Text -List $summary.errors -Text (Format-ErrorText -Record $_)
}
finally {
    Restore-Services -Stopped $stopped -Summary $summary
}
Write-Summary -Summary $summary
