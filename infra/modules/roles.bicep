// Least-privilege access, by role definition id and the narrowest scope that works:
// - the Function App's identity: Storage Blob Data Contributor and Storage Queue Data
//   Contributor on the lake (Delta tables; the bronze-events and gold-build queues), Storage
//   Blob Data Owner on its own host storage (what the Functions host needs for its state and
//   the package), and Monitoring Metrics Publisher on Application Insights (Entra-only
//   telemetry);
// - the Databricks access connector: Storage Blob Data Reader on the silver and gold
//   containers only (Unity Catalog reads tunelake's Delta tables; it writes none, and reaches
//   neither bronze nor the deployment package).
// Event Grid's roles live with its subscription (eventgrid.bicep); SQL access is granted
// inside the database, not here: see docs/azure.md.
param lakeAccountName string
param hostAccountName string
param appInsightsName string
param functionPrincipalId string
param databricksPrincipalId string

var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var databricksAreas = ['silver', 'gold']

resource lake 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeAccountName
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostAccountName
}

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource areaContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [
  for area in databricksAreas: {
    name: '${lakeAccountName}/default/${area}'
  }
]

resource functionLakeBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: lake
  name: guid(lake.id, functionPrincipalId, storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource functionLakeQueues 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: lake
  name: guid(lake.id, functionPrincipalId, storageQueueDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource functionHostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: hostStorage
  name: guid(hostStorage.id, functionPrincipalId, storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource functionTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: insights
  name: guid(insights.id, functionPrincipalId, monitoringMetricsPublisher)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource databricksReadsArea 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (area, i) in databricksAreas: {
    scope: areaContainers[i]
    name: guid(areaContainers[i].id, databricksPrincipalId, storageBlobDataReader)
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
      principalId: databricksPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]
