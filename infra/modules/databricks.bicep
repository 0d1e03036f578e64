// A Databricks access connector: its managed identity is what a Unity Catalog storage
// credential uses to read the lake's Delta tables (role in roles.bicep).
param name string
param location string
param tags object

resource connector 'Microsoft.Databricks/accessConnectors@2024-05-01' = {
  name: 'dbac-${name}'
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {}
}

output principalId string = connector.identity.principalId
output id string = connector.id
