using './main.bicep'

param environment = 'prod'
param location = 'westeurope'
param sqlAdminLogin = 'tunelake-sql-admins'
param sqlAdminObjectId = '00000000-0000-0000-0000-000000000000' // replace: the Entra group's object id
param alertTo = 'data-oncall@contoso.example'
param alertFrom = 'tunelake-alerts@contoso.example'
param ingestSchedule = '0 */15 * * * *'
