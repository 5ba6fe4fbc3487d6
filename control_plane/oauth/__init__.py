"""The OAuth 2.0 authorization server (public schema): tenants' client applications, the keys that sign
access tokens (JWTs), and the authentication of those tokens on the API. Built on django-oauth-toolkit."""
