"""Email notifications: SMTP profile, signed acknowledgement links and IMAP reply-acks (docs/email.md)."""
