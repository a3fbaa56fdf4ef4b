// The two custom roles of the Function's identity, defined once per environment at subscription scope.
//
// "RDP Remediation Operator" holds exactly the Resource Manager actions the product performs: the list
// below must equal ROLE_ACTIONS in remediate/azure/permissions.py (a test compares them). No built-in role is
// this narrow: Virtual Machine Contributor would also let the function create, resize and delete VMs.
//
// "RDP Remediation Log Reader" lets the evidence query read the System event log (the Event table) of one
// workspace, and nothing else there: Log Analytics Reader would open every table, and */read on the scope.
//
// "RDP Remediation Activity Log Reader" lets the product ask the Activity Log whether Azure accepted a restart.
// Its one action is assigned on each target scope's whole subscription, not on a resource group: the list API
// is a subscription-level operation (GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/
// values, Microsoft Learn "Activity Logs - List", REST API for Azure Monitor), and Microsoft Learn "Roles,
// permissions, and security in Azure Monitor" describes the action as "List Activity Log events (management
// events) in a subscription". Granted on a resource group only, the read is refused or comes back without
// the events a restart left, and "no accepted restart" must never be concluded from a log we could not read.
targetScope = 'subscription'

@description('Environment name: custom role names are unique per tenant, so each environment has its own.')
param environmentName string

@minLength(1)
@description('Subscriptions and resource groups where the operator role may be assigned.')
param targetScopes array

@description('Resource group (id) of the workspace the log reader role is assigned on.')
param workspaceGroupId string

@minLength(1)
@description('The subscriptions (/subscriptions/ID) that hold the target scopes: the Activity Log reader role is assigned on each.')
param targetSubscriptions array

var operatorActions = [
  'Microsoft.AlertsManagement/alerts/changestate/action'
  'Microsoft.AlertsManagement/alerts/read'
  'Microsoft.Compute/locations/operations/read'
  'Microsoft.Compute/virtualMachines/instanceView/read'
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/restart/action'
  'Microsoft.Compute/virtualMachines/runCommand/action'
  'Microsoft.Network/locations/operationResults/read'
  'Microsoft.Network/networkInterfaces/effectiveNetworkSecurityGroups/action'
  'Microsoft.Network/networkInterfaces/read'
  'Microsoft.ResourceGraph/resources/read'
  'Microsoft.Security/locations/jitNetworkAccessPolicies/read'
]

var activityLogActions = [
  'Microsoft.Insights/eventtypes/values/read'
]

var logReaderActions = [
  'Microsoft.OperationalInsights/workspaces/query/Event/read'
  'Microsoft.OperationalInsights/workspaces/query/read'
  'Microsoft.OperationalInsights/workspaces/read'
]

resource operator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, environmentName, 'rdp-remediation-operator')
  properties: {
    roleName: 'RDP Remediation Operator (${environmentName})'
    description: 'Read VMs and their NICs, query Resource Graph, run repair scripts with Run Command and restart VMs. Used by rdp-remediate.'
    type: 'CustomRole'
    permissions: [
      {
        actions: operatorActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: targetScopes
  }
}

resource logReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, environmentName, 'rdp-remediation-log-reader')
  properties: {
    roleName: 'RDP Remediation Log Reader (${environmentName})'
    description: 'Query the Event table of a Log Analytics workspace. Used by rdp-remediate for log evidence.'
    type: 'CustomRole'
    permissions: [
      {
        actions: logReaderActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      workspaceGroupId
    ]
  }
}

resource activityLogReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, environmentName, 'rdp-remediation-activity-log-reader')
  properties: {
    roleName: 'RDP Remediation Activity Log Reader (${environmentName})'
    description: 'List Activity Log events of a subscription: did Azure accept a restart rdp-remediate sent? Used by rdp-remediate.'
    type: 'CustomRole'
    permissions: [
      {
        actions: activityLogActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: targetSubscriptions
  }
}

output operatorRoleId string = operator.id
output activityLogReaderRoleId string = activityLogReader.id
output logReaderRoleId string = logReader.id
