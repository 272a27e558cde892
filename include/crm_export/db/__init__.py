"""PostgreSQL edge of crm-export: schema migrations, the embedded server, queries."""
