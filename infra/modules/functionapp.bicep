// The Function App: Linux, Flex Consumption, custom handler (the tunelake binary), with a
// system-assigned managed identity. Storage is reached through that identity only.
param name string
param location string
param tags object
param storageAccountName string
param appInsightsConnectionString string
param sqlServerFqdn string
param sqlDatabaseName string
param alertTo string
param alertFrom string
param ingestSchedule string
@description('NCRONTAB schedule of the maintain function (compaction, vacuum, log cleanup).')
param maintainSchedule string = '0 30 3 * * *'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'asp-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-${name}-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}deployments'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: [
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'LAKE_CONNECTION__blobServiceUri', value: storage.properties.primaryEndpoints.blob }
        { name: 'LAKE_CONNECTION__queueServiceUri', value: storage.properties.primaryEndpoints.queue }
        { name: 'LAKE_CONNECTION__credential', value: 'managedidentity' }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD' }
        { name: 'TUNELAKE_LAKE', value: 'abfss://{area}@${storage.name}.dfs.${environment().suffixes.storage}/' }
        {
          name: 'TUNELAKE_SOURCE'
          value: 'Server=tcp:${sqlServerFqdn},1433;Database=${sqlDatabaseName};Authentication=Active Directory Managed Identity;Encrypt=true'
        }
        { name: 'TUNELAKE_ALERT_TO', value: alertTo }
        { name: 'TUNELAKE_ALERT_FROM', value: alertFrom }
        { name: 'INGEST_SCHEDULE', value: ingestSchedule }
        { name: 'MAINTAIN_SCHEDULE', value: maintainSchedule }
      ]
    }
  }
}

output name string = site.name
output principalId string = site.identity.principalId
