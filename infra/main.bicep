// rdp-remediate: the Function App and everything it needs, deployed at subscription scope so that one
// deployment can create its resource group, define its custom roles and assign them at the target scopes.
//
//   azd up                                   (reads main.parameters.json, substitutes the azd environment)
//   az deployment sub create -l REGION -f infra/main.bicep -p infra/main.parameters.json -p environmentName=...
targetScope = 'subscription'

// --- Parameters ------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(40)
@description('Name of the environment (azd). Resource names, tags and the custom role names derive from it.')
param environmentName string

@minLength(1)
@description('Region of every resource created here.')
param location string

@description('Resource group to create. Empty: rg-<environmentName>.')
param resourceGroupName string = ''

@minLength(1)
@description('Comma-separated scopes the product may act on: /subscriptions/ID and/or /subscriptions/ID/resourceGroups/NAME. The operator role is assigned at each one and RDPR_SCOPES is set to the same list.')
param targetScopes string

@allowed([
  'report'
  'remediate'
])
@description('RDPR_SWEEP_MODE: report records what the scheduled sweep finds; remediate enqueues repairs.')
param sweepMode string = 'report'

@description('RDPR_DRY_RUN: true plans every remediation without running a script or restarting a VM.')
param dryRun bool = true

@description('RDPR_SWEEP_SCHEDULE: NCRONTAB schedule of the sweep (six fields, seconds first, UTC).')
param sweepSchedule string = '0 0 */6 * * *'

@description('RDPR_REQUIRE_OPT_IN: true remediates only VMs carrying the opt-in tag.')
param requireOptIn bool = false

@description('RDPR_OPT_IN_TAG: NAME=VALUE (or NAME) a VM must carry when requireOptIn is true.')
param optInTag string = 'rdp-remediate=on'

@description('RDPR_OPT_OUT_TAG: NAME=VALUE (or NAME); a VM carrying it is never touched.')
param optOutTag string = 'rdp-remediate=off'

@allowed([
  512
  2048
  4096
])
@description('Memory of each Flex Consumption instance, in MB.')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Most instances the Function App scales out to; times the 5 queue invocations per instance (host.json), it must reach RDPR_MAX_ACTIVE, the fleet-wide bound on VMs repaired at once.')
param maximumInstanceCount int = 10

@description('Client id of the Microsoft Entra app registration protecting the HTTP API (App Service authentication). Empty: the function key opens /api/alerts only; every other route answers 401, and runbooks, status and approvals go through the CLI.')
param authClientId string = ''

@description('Subnet for VNet integration (resource id, delegated to Microsoft.App/environments). Empty: none, and the RDP probe cannot reach private IPs, so verification reports unverified.')
param subnetId string = ''

@description('Log Analytics workspace (resource id) the VMs send their System event log to. Empty: the workspace created here.')
param eventsWorkspaceId string = ''

@description('Also fire the function on the VM availability metric (all VMs of the region in each target scope).')
param enableAvailabilityAlert bool = false

@description('Region of the VMs the availability alert watches. Empty: the deployment region.')
param availabilityAlertRegion string = ''

// --- Names -----------------------------------------------------------------------------------------------

var token = toLower(uniqueString(subscription().id, environmentName, location))
var groupName = empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
var tags = {
  'azd-env-name': environmentName
  application: 'rdp-remediate'
}
var names = {
  identity: 'id-rdpr-${token}'
  storage: 'strdpr${token}'
  workspace: 'log-rdpr-${token}'
  appInsights: 'appi-rdpr-${token}'
  plan: 'plan-rdpr-${token}'
  functionApp: 'func-rdpr-${token}'
  actionGroup: 'ag-rdpr-${token}'
  eventsAlert: 'alert-rdpr-rdp-tls-events-${token}'
  availabilityAlert: 'alert-rdpr-vm-availability-${token}'
}

// The queue and the ledger's tables (remediate/ledger.py). RDPR_QUEUE_NAME and RDPR_TABLE_PREFIX are set from
// these same values, so the app and its storage cannot drift apart. The poison queue is where the host moves
// a message after its last failed delivery.
var queueName = 'remediation-requests'
var tablePrefix = 'rdpr'
var storageLayout = {
  queues: [
    queueName
    '${queueName}-poison'
  ]
  tables: [
    '${tablePrefix}vms'
    '${tablePrefix}audit'
    '${tablePrefix}dedup'
    '${tablePrefix}fleet'
    '${tablePrefix}fleethistory'
    '${tablePrefix}sweeps'
    '${tablePrefix}control'
  ]
}

// Spaces and empty entries are dropped. A scope naming a resource group is assigned there, any other scope on
// its subscription; a malformed entry makes the role definition (whose assignable scopes are this list) fail
// to deploy rather than silently grant nothing.
var scopeList = filter(split(replace(targetScopes, ' ', ''), ','), target => !empty(target))
// The subscription of each target scope, each once: the Activity Log is listed per subscription (roles.bicep).
// (A for-expression of its own, then union() to keep each once: the offline checks' parser reads no map().)
var subscriptionEach = [for target in scopeList: '/subscriptions/${split(target, '/')[2]}']
var subscriptionList = union(subscriptionEach, [])

var ownWorkspaceId = resourceId(subscription().subscriptionId, groupName, 'Microsoft.OperationalInsights/workspaces', names.workspace)
var eventsWorkspace = empty(eventsWorkspaceId) ? ownWorkspaceId : eventsWorkspaceId
var eventsWorkspaceParts = split(eventsWorkspace, '/')

// --- Resource group and its resources ---------------------------------------------------------------------

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: groupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'rdpr-identity'
  scope: group
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'rdpr-monitoring'
  scope: group
  params: {
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'rdpr-storage'
  scope: group
  params: {
    name: names.storage
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    queueNames: storageLayout.queues
    tableNames: storageLayout.tables
  }
}

module roles 'modules/roles.bicep' = {
  name: 'rdpr-roles-${token}'
  params: {
    environmentName: environmentName
    targetScopes: scopeList
    targetSubscriptions: subscriptionList
    workspaceGroupId: '/subscriptions/${eventsWorkspaceParts[2]}/resourceGroups/${eventsWorkspaceParts[4]}'
  }
}

// The evidence query runs against the events workspace: grant the log reader role there, and read its
// customer id (the GUID the query API wants) whether the workspace is ours or an existing one.
module workspaceAccess 'modules/workspace-access.bicep' = {
  name: 'rdpr-workspace-access-${token}'
  scope: resourceGroup(eventsWorkspaceParts[2], eventsWorkspaceParts[4])
  params: {
    workspaceName: last(eventsWorkspaceParts)
    principalId: identity.outputs.principalId
    roleDefinitionId: roles.outputs.logReaderRoleId
  }
  dependsOn: [
    monitoring
  ]
}

module functionApp 'modules/function.bicep' = {
  name: 'rdpr-function'
  scope: group
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    subnetId: subnetId
    targetScopes: join(scopeList, ',')
    sweepMode: sweepMode
    dryRun: dryRun
    sweepSchedule: sweepSchedule
    requireOptIn: requireOptIn
    optInTag: optInTag
    optOutTag: optOutTag
    logWorkspaceCustomerId: workspaceAccess.outputs.customerId
    queueName: queueName
    tablePrefix: tablePrefix
  }
}

// --- Microsoft Entra ID in front of every route but /api/alerts (approvals need a real identity) --------------

module auth 'modules/auth.bicep' = if (!empty(authClientId)) {
  name: 'rdpr-auth'
  scope: group
  params: {
    functionAppName: names.functionApp
    clientId: authClientId
  }
  dependsOn: [
    functionApp
  ]
}

// --- The operator role at every target scope ---------------------------------------------------------------
// A resource group assignment has to be deployed at that resource group's scope. Splitting
// /subscriptions/ID/resourceGroups/NAME on '/' gives the subscription id at index 2 and the group at index 4.

module subscriptionAssignments 'modules/operator-assignment-subscription.bicep' = [
  for (target, index) in scopeList: if (!contains(toLower(target), '/resourcegroups/')) {
    name: 'rdpr-operator-sub-${token}-${index}'
    scope: subscription(split(target, '/')[2])
    params: {
      principalId: identity.outputs.principalId
      roleDefinitionId: roles.outputs.operatorRoleId
    }
  }
]

module groupAssignments 'modules/operator-assignment-group.bicep' = [
  for (target, index) in scopeList: if (contains(toLower(target), '/resourcegroups/')) {
    name: 'rdpr-operator-rg-${token}-${index}'
    // take(..., 5) keeps the expression valid for the subscription entries this loop skips.
    scope: resourceGroup(split(target, '/')[2], last(take(split(target, '/'), 5)))
    params: {
      principalId: identity.outputs.principalId
      roleDefinitionId: roles.outputs.operatorRoleId
    }
  }
]

// --- The Activity Log reader role on the subscription of every target scope (roles.bicep says why) -----------

module activityLogAssignments 'modules/operator-assignment-subscription.bicep' = [
  for (target, index) in subscriptionList: {
    name: 'rdpr-activity-log-${token}-${index}'
    scope: subscription(split(target, '/')[2])
    params: {
      principalId: identity.outputs.principalId
      roleDefinitionId: roles.outputs.activityLogReaderRoleId
    }
  }
]

// --- Alerts wired to the function ------------------------------------------------------------------------

module alerts 'modules/alerts.bicep' = {
  name: 'rdpr-alerts'
  scope: group
  params: {
    actionGroupName: names.actionGroup
    eventsAlertName: names.eventsAlert
    availabilityAlertName: names.availabilityAlert
    functionAppName: functionApp.outputs.name
    eventsWorkspaceId: eventsWorkspace
    location: location
    tags: tags
    enableAvailabilityAlert: enableAvailabilityAlert
    availabilityScopes: scopeList
    availabilityRegion: empty(availabilityAlertRegion) ? location : availabilityAlertRegion
  }
  dependsOn: [
    workspaceAccess
  ]
}

module workbook 'modules/workbook.bicep' = {
  name: 'rdpr-workbook'
  scope: group
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    environmentName: environmentName
  }
}

// --- Outputs (azd stores them in the environment) -----------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = group.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_URL string = functionApp.outputs.url
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_STORAGE_ACCOUNT string = storage.outputs.name
output AZURE_ACTION_GROUP_ID string = alerts.outputs.actionGroupId
output RDPR_OPERATOR_ROLE_ID string = roles.outputs.operatorRoleId
output RDPR_LOG_READER_ROLE_ID string = roles.outputs.logReaderRoleId
output RDPR_ACTIVITY_LOG_READER_ROLE_ID string = roles.outputs.activityLogReaderRoleId
