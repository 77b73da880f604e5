"""Plain-text rendering of explanations, for people at a terminal."""

from __future__ import annotations


def render_explanation(data: dict, policy) -> str:
    loc = data["location"]
    req = data["request"]
    lines = [f"Policy     {policy.root} (version {data['policy_version']})"]
    if loc["country"]:
        where = f"{loc['country']} {loc['country_name']}"
        if loc["subdivision"]:
            where += f", {loc['subdivision']} {loc['subdivision_name']}"
    else:
        where = "unknown"
    source = loc["source"] + (f", {loc['database']}" if loc["database"] else "")
    lines.append(f"Client     {where} (source: {source})")
    data_class = req["effective_data_class"] or "-"
    if req["data_class"] is None and data_class != "-":
        data_class += " (policy default)"
    model = req["model"] or "none named (decided as under every model of the catalogue)"
    lines.append(
        f"Request    model {model}, tenant {req['tenant'] or '-'}, data class {data_class}"
    )
    if data["action"] == "route":
        first = data["candidates"][0]
        lines.append(f"Decision   ROUTE to {first['endpoint']} ({first['country']})")
    else:
        rule = f" by {data['deny_rule']}" if data["deny_rule"] else ""
        lines.append(f"Decision   DENY ({data['deny_code']}){rule}")
    lines.append(f"Reason     {data['reason']}")
    if data["legal_basis"]:
        lines.append(f"Basis      {data['legal_basis']}")
    if data["permitted"]:
        lines.append(f"Permitted  {' '.join(data['permitted'])}")
    lines.append("Rules")
    width = max((len(r["rule"]) for r in data["rules"]), default=0)
    for rule in sorted(data["rules"], key=lambda r: (not r["matched"], r["rule"])):
        mark = "+" if rule["matched"] else "-"
        lines.append(
            f"  {mark} {rule['rule']:<{width}}  {rule['effect']:<10}  {rule['why']}  [{rule['at']}]"
        )
    if data["candidates"]:
        lines.append("Candidates (in failover order; equal rank = equally preferred)")
        for i, c in enumerate(data["candidates"], 1):
            place = c["subdivision"] or c["country"]
            served = f"  model {c['upstream_model']}" if c["upstream_model"] else ""
            lines.append(
                f"  {i}. {c['endpoint']}  rank {c['rank']}  {place}  {c['tier']}  "
                f"priority {c['priority']}{served}"
            )
    if data["excluded"]:
        lines.append("Excluded")
        for x in data["excluded"]:
            lines.append(f"  {x['endpoint']}: {x['reason']}")
    return "\n".join(lines)
