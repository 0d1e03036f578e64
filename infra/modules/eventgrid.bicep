// Blob-created events on the bronze container go to the `bronze-events` queue, which the
// `silver` function is triggered by. Delivery and dead-lettering use the system topic's own
// managed identity (no keys, nothing read from the Function App), so the whole environment
// deploys in one pass, before any code exists.
param name string
param location string
param tags object
param lakeAccountName string
param hostAccountName string

var queueMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource lake 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeAccountName
}

resource bronzeEvents 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  name: '${lakeAccountName}/default/bronze-events'
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostAccountName
}

resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${hostAccountName}/default/eventgrid-deadletter'
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'egt-${name}'
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: lake.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// The topic may put messages on the bronze-events queue and nowhere else.
resource topicSendsEvents 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: bronzeEvents
  name: guid(bronzeEvents.id, topic.id, queueMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueMessageSender)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// ... and write dead letters into their container and nowhere else.
resource topicWritesDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: deadLetters
  name: guid(deadLetters.id, topic.id, storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource bronzeToSilver 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'bronze-to-silver'
  dependsOn: [topicSendsEvents, topicWritesDeadLetters]
  properties: {
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'StorageQueue'
        properties: {
          resourceId: lake.id
          queueName: 'bronze-events'
          // Never expire: an event waits in the queue until silver has loaded its file.
          queueMessageTimeToLiveInSeconds: -1
        }
      }
    }
    filter: {
      includedEventTypes: ['Microsoft.Storage.BlobCreated']
      subjectBeginsWith: '/blobServices/default/containers/bronze/blobs/'
      subjectEndsWith: '.parquet'
      // A whole blob: not the empty file a hierarchical-namespace CreateFile announces.
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: ['PutBlob', 'PutBlockList', 'FlushWithClose', 'CopyBlob']
        }
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: hostStorage.id
          blobContainerName: 'eventgrid-deadletter'
        }
      }
    }
  }
}
