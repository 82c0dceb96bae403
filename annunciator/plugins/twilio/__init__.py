"""Twilio account code shared by the SMS and voice plugins: settings, the official client pointed at
the configured API base (or the built-in emulator), and the webhook signature check."""
