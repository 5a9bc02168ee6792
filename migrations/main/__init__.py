"""The main migration set: CRM, payments, read projections, newsletter, social, station RBAC."""
