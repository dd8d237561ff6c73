"""The message format shared by the ClientApp and the ServerApp: record names and the
conversions between the library's arrays and Flower records."""
