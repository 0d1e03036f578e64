using './main.bicep'

param environment = 'dev'
param location = 'westeurope'
param sqlAdminLogin = 'tunelake-sql-admins'
param sqlAdminObjectId = '00000000-0000-0000-0000-000000000000' // replace: the Entra group's object id
param alertTo = ''
param ingestSchedule = '0 0 */6 * * *' // every 6 hours: lets the serverless database pause in between
