//! How a mail names the ticket it belongs to: Message-IDs it refers to,
//! the token hidden in our own Message-IDs, the subject tag; and who may
//! join a ticket.
