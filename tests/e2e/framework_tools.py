"""The LangChain tools the framework tests give their agents (test_agent_frameworks.py,
test_langchain_agents.py)."""

from __future__ import annotations


def weather_and_time_tools() -> list:
    """get_weather and get_time as LangChain tools: the two-tool task's tools."""
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny and 21 degrees in {city}."

    @tool
    def get_time(city: str) -> str:
        """Get the current local time in a city."""
        return f"It is 14:05 in {city}."

    return [get_weather, get_time]
