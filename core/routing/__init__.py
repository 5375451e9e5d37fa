"""Which handler answers a message: the router, commands, intents, middlewares."""
