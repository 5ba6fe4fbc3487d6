"""Portal users and their memberships in tenants (public schema): who may sign in, and in which role."""
