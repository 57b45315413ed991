"""Infrastructure shared by every domain: settings, database, auth. Imports no domain."""
