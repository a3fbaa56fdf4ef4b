// The two custom roles of the Function's identity, defined once per environment at subscription scope.
//
// "RDP Remediation Operator" holds exactly the Resource Manager actions the product performs: the list
// below must equal ROLE_ACTIONS in remediate/azure/permissions.py (a test compares them). No built-in role is
// this narrow: Virtual Machine Contributor would also let the function create, resize and delete VMs.
//
// "RDP Remediation Log Reader" lets the evidence query read the System event log (the Event table) of one
// workspace, and nothing else there: Log Analytics Reader would open every table, and */read on the scope.
targetScope = 'subscription'

@description('Environment name: custom role names are unique per tenant, so each environment has its own.')
param environmentName string

@minLength(1)
@description('Subscriptions and resource groups where the operator role may be assigned.')
param targetScopes array

@description('Resource group (id) of the workspace the log reader role is assigned on.')
param workspaceGroupId string

var operatorActions = [
  'Microsoft.AlertsManagement/alerts/changestate/action'
  'Microsoft.Compute/locations/operations/read'
  'Microsoft.Compute/virtualMachines/instanceView/read'
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/restart/action'
  'Microsoft.Compute/virtualMachines/runCommand/action'
  'Microsoft.Insights/eventtypes/values/read'
  'Microsoft.Network/locations/operationResults/read'
  'Microsoft.Network/networkInterfaces/effectiveNetworkSecurityGroups/action'
  'Microsoft.Network/networkInterfaces/read'
  'Microsoft.ResourceGraph/resources/read'
  'Microsoft.Security/locations/jitNetworkAccessPolicies/read'
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

output operatorRoleId string = operator.id
output logReaderRoleId string = logReader.id
