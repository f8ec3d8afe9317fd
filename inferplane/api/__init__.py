"""The OpenAI API surface inferplane speaks: request and response schemas."""
