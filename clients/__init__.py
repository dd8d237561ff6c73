"""The Flower ClientApp: thin glue from messages to multifcl."""
