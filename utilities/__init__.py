"""Small cross-cutting helpers: configuration, errors, seeding, logging, distributed."""
