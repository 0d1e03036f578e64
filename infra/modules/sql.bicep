// Azure SQL, the source: Entra ID authentication only (no SQL logins, no passwords anywhere),
// no public endpoint: the Function App reaches it through a private endpoint (main.bicep).
param name string
param location string
param tags object
param adminLogin string
param adminObjectId string
@description('Open the public endpoint to every network (dev, for loading data from a laptop); private otherwise.')
param allowPublicNetwork bool = false

resource server 'Microsoft.Sql/servers@2023-08-01' = {
  name: 'sql-${name}-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  properties: {
    minimalTlsVersion: '1.2'
    publicNetworkAccess: allowPublicNetwork ? 'Enabled' : 'Disabled'
    administrators: {
      administratorType: 'ActiveDirectory'
      azureADOnlyAuthentication: true
      login: adminLogin
      sid: adminObjectId
      tenantId: tenant().tenantId
      principalType: 'Group'
    }
  }
}

resource database 'Microsoft.Sql/servers/databases@2023-08-01' = {
  parent: server
  name: 'music'
  location: location
  tags: tags
  sku: {
    name: 'GP_S_Gen5_1'
    tier: 'GeneralPurpose'
  }
  properties: {
    autoPauseDelay: 60
    minCapacity: json('0.5')
  }
}

output serverName string = server.name
output id string = server.id
output serverFqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
