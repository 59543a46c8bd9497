"""What every reference service shares: configuration and process set-up."""
