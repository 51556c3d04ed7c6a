"""Example agents, each runnable with `agentgate run agents/agentgate/examples/FILE.py [--quick]`:

- react.py            ReAct loop on real tool calls (search over data/corpus/, calculator), unrolled into a workflow
- map_reduce.py       map-reduce summarization of the documents in data/docs/
- multi_agent.py      planner → parallel executors → critic → writer
- diamond.py          planner → three reviewers in parallel → critic, each role with its own ~1,000-token prompt
- code_edit.py        a copy-heavy code-editing conversation with a checker tool
- react_langgraph.py  the same agent as LangGraph's prebuilt create_react_agent, calling the gateway's chat API
- agents_sdk.py       an OpenAI Agents SDK triage → billing handoff with function tools, through the chat API

Each workflow example defines `build(quick=False, variant=0)`, each client-driven one
`run_agent(client, *, quick, inputs, variant)`; the workflow benchmark (scripts/bench_workflows.py)
runs many variants of them at once (the client-driven ones when --examples names them).
"""
