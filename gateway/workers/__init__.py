"""The worker pool: HTTP client for the SGLang/OpenAI API, health checks, circuit breaker."""
