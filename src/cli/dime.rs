//! `dimegate keys|signet|record|message`: DIME administration commands.
