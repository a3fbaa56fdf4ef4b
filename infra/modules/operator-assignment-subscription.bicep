// The operator role for the Function's identity on one whole subscription.
targetScope = 'subscription'

@description('Principal id of the Function\'s managed identity.')
param principalId string

@description('Resource id of the "RDP Remediation Operator" role definition.')
param roleDefinitionId string

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, roleDefinitionId)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
  }
}
