// Log evidence: the log reader role on the workspace the VMs send their System event log to (ours or an
// existing one), and that workspace's customer id, which is what the query API addresses.
@description('Name of the Log Analytics workspace (in this resource group).')
param workspaceName string

@description('Principal id of the Function\'s managed identity.')
param principalId string

@description('Resource id of the "RDP Remediation Log Reader" role definition.')
param roleDefinitionId string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, roleDefinitionId)
  scope: workspace
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
  }
}

output customerId string = workspace.properties.customerId
