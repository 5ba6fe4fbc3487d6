"""Billing: metering, Stripe customers and subscriptions, finance reports (public schema)."""
