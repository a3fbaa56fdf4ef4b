// One of the product's custom roles (the operator role, or the Activity Log reader role) for the Function's
// identity on one whole subscription.
targetScope = 'subscription'

@description('Principal id of the Function\'s managed identity.')
param principalId string

@description('Resource id of the role definition ("RDP Remediation Operator" or "RDP Remediation Activity Log Reader").')
param roleDefinitionId string

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, roleDefinitionId)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
  }
}
