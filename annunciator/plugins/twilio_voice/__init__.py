"""Twilio voice: alarm calls with a PIN and keypad acknowledgement, call scripts, call statistics."""
