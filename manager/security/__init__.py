"""The manager's security code in one place.

- ``pki``: X.509 helpers (an EC P-256 CA and the certificates it signs);
- ``flower_pki``: a project's own CA for its mutually authenticated training links;
- ``tracking_pki``: the CA of the customers' MLflow servers and observers, kept across restarts;
- ``secret_box``: Fernet sealing of what the manager keeps in its database;
- ``project_secrets``: a project's sealed secrets (its repository's credentials);
- ``config_vault``: service configurations kept sealed and fetched by reference with a token.
"""
