# Turns bench/gateway.sh's result files (BENCH_DIR/gateway) into the "Gateway against nginx" Markdown section.
"""Usage: gateway_report.py RESULTS_DIR [OUT.md]

Reads, from RESULTS_DIR (written by bench/gateway.sh):
  machine.env   machine, versions, settings, negotiated TLS, peak RSS
  runs.tsv      one line per measured wrk run:
      round load path target rps p50_ms p90_ms p99_ms max_ms requests seconds non2xx
      socket_errors proxy_cpu_s upstream_cpu_s wrk_cpu_s other_cpu_s steal_s load1 status
  rounds.tsv    round disturbed(0/1)
  checks.tsv    one curl request per target and path: status, body identical, header bytes
Prints the section on stdout. With OUT.md, puts it into that file: an existing
"## Gateway against nginx" section (up to the next "## " heading) is replaced, otherwise the
section is appended; the rest of the file is left as it is. Every number comes from the files.
"""
import os
import shlex
import statistics
import sys

from benchlib import read_env

HEADING = "## Gateway against nginx"
TARGETS = ("gateway", "gateway-limit", "gateway-rules", "gateway-redis", "nginx", "gateway-waf", "nginx-waf", "direct")
PATHS = ("html", "json")
LOADS = ("loaded", "light")
TARGET_LABEL = {
    "gateway": "palisade gateway (TLS)",
    "gateway-limit": "palisade gateway + a rate limit (in process)",
    "gateway-rules": "palisade gateway + validation and a rate limit",
    "gateway-redis": "the same, its rate limit in Redis (redis-server's CPU counted)",
    "nginx": "nginx proxy (TLS)",
    "gateway-waf": "palisade gateway + WAF (OWASP CRS, paranoia level 1)",
    "nginx-waf": "nginx + ModSecurity 3 (the same CRS configuration)",
    "direct": "upstream direct (plain HTTP)",
}
PATH_LABEL = {"html": "HTML `/index.html`", "json": "JSON `/api/items.json`"}


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_runs(path):
    cols = ("round load path target rps p50 p90 p99 max requests seconds non2xx sock "
            "proxy_cpu upstream_cpu wrk_cpu other steal load1 status").split()
    runs = []
    if not os.path.exists(path):
        return runs
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < len(cols):
                parts += [""] * (len(cols) - len(parts))
            r = dict(zip(cols, parts))
            r["round"] = int(r["round"])
            for k in ("rps", "p50", "p90", "p99", "max", "seconds", "proxy_cpu", "upstream_cpu", "wrk_cpu", "other",
                      "steal", "load1"):
                r[k] = num(r[k])
            r["requests"] = int(r["requests"]) if r["requests"].isdigit() else None
            r["non2xx"] = int(r["non2xx"]) if r["non2xx"].isdigit() else None
            runs.append(r)
    return runs


def disturbed(r):
    """Other processes used more than a quarter of a core on average during the run (as gateway.sh decides)."""
    return r["other"] is not None and r["seconds"] and r["other"] > 0.25 * r["seconds"]


def tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    if not lines:
        return []
    head = lines[0]
    return [dict(zip(head, l)) for l in lines[1:]]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ms(v):
    if v is None:
        return "–"
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 10:
        return f"{v:.2f} ms"
    return f"{v:.1f} ms"


def fmt_delta_ms(v):
    if v is None:
        return "–"
    sign = "+" if v >= 0 else "−"
    a = abs(v)
    if a < 1:
        return f"{sign}{a * 1000:.0f} µs"
    return f"{sign}{a:.2f} ms"


def fmt_rps(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_kib(kb):
    kb = num(kb)
    return "–" if kb is None else f"{kb / 1024:.1f} MiB"


DEFAULTS = {"WRK_THREADS": "2", "WRK_CONNECTIONS": "32", "WRK_DURATION": "15s", "WRK_WARMUP": "5s",
            "WRK_LIGHT_CONNECTIONS": "1", "WRK_LIGHT_DURATION": "10s", "BENCH_ROUNDS": "3",
            "UPSTREAM_WORKERS": "1"}


def command(env):
    """The command line of the run: the settings that differ from the defaults, then the script.
    Paths of the machine it ran on stay out: a given binary is named by its role (the build note
    says what it was built from), the output file by its place in the repository."""
    parts = []
    if env.get("PALISADE_BIN_GIVEN"):
        parts.append("PALISADE_BIN=path/to/palisade")
    for k, v in DEFAULTS.items():
        if k in env and env[k] != v:
            parts.append(f"{k}={shlex.quote(env[k])}")
    if "BENCH_MAX_ROUNDS" in env and "BENCH_ROUNDS" in env and \
            env["BENCH_MAX_ROUNDS"] != str(2 * int(env["BENCH_ROUNDS"])):
        parts.append(f"BENCH_MAX_ROUNDS={env['BENCH_MAX_ROUNDS']}")
    out = env["OUT_ARG"] if "OUT_ARG" in env else "docs/benchmarks.md"
    if os.path.isabs(out):
        out = "docs/benchmarks.md" if out.endswith("/docs/benchmarks.md") else os.path.basename(out)
    return " ".join(parts + ["bench/gateway.sh"] + ([shlex.quote(out)] if out else []))


def spread_note(agg):
    """How far apart the runs of one load, path and target were, at most, in req/s."""
    spreads = [(a["rps_max"] - a["rps_min"]) / a["rps"] for a in agg.values()
               if a["n"] > 1 and a["rps"] and a["rps_min"] is not None]
    if not spreads:
        return ""
    return (f"; the runs of one target, path and load differed by up to {max(spreads) * 100:.0f} % of their "
            f"median in req/s (by {statistics.median(spreads) * 100:.0f} % typically)")


def stamp(iso):
    return "?" if not iso else iso.replace("T", " ").replace("Z", " UTC")


def verdict(cond):
    if cond is None:
        return "not measured"
    return "**PASS**" if cond else "**FAIL**"


def aggregate(runs):
    """Per (load, path, target): medians over its undisturbed runs (over all its runs when every
    one was disturbed), with the range; the error counts are summed over every run."""
    out = {}
    keys = sorted({(r["load"], r["path"], r["target"]) for r in runs})
    for key in keys:
        every = [r for r in runs if (r["load"], r["path"], r["target"]) == key]
        use = [r for r in every if not disturbed(r)] or every
        rps = [r["rps"] for r in use if r["rps"] is not None]
        cpu_per_req = [r["proxy_cpu"] / r["requests"] * 1e6 for r in use
                       if r["proxy_cpu"] is not None and r["requests"]]
        up_per_req = [r["upstream_cpu"] / r["requests"] * 1e6 for r in use
                      if r["upstream_cpu"] is not None and r["requests"]]
        out[key] = {
            "n": len(use),
            "all_disturbed": all(disturbed(r) for r in every),
            "rps": median(rps),
            "rps_min": min(rps) if rps else None,
            "rps_max": max(rps) if rps else None,
            "p50": median(r["p50"] for r in use),
            "p99": median(r["p99"] for r in use),
            "p99_min": min((r["p99"] for r in use if r["p99"] is not None), default=None),
            "p99_max": max((r["p99"] for r in use if r["p99"] is not None), default=None),
            "cpu_us": median(cpu_per_req),
            "up_us": median(up_per_req),
            "non2xx": sum(r["non2xx"] or 0 for r in every),
            "sock": [r["sock"] for r in every if r["sock"] not in ("0/0/0/0", "-", "")],
            "bad": [r for r in every if r["status"] != "ok"],
            "requests": sum(r["requests"] or 0 for r in every),
        }
    return out


def section(results):
    env = read_env(os.path.join(results, "machine.env"))
    runs = read_runs(os.path.join(results, "runs.tsv"))
    rounds = tsv_rounds(os.path.join(results, "rounds.tsv"))
    checks = tsv(os.path.join(results, "checks.tsv"))
    agg = aggregate(runs)
    L = []
    w = L.append

    threads, conns = env.get("WRK_THREADS", "2"), env.get("WRK_CONNECTIONS", "32")
    dur, warm = env.get("WRK_DURATION", "15s"), env.get("WRK_WARMUP", "5s")
    lconns, ldur = env.get("WRK_LIGHT_CONNECTIONS", "1"), env.get("WRK_LIGHT_DURATION", "10s")
    light = any(r["load"] == "light" for r in runs)
    nproc = env.get("NPROC", "?")

    w(HEADING)
    w("")
    w(f"This section is generated by `bench/gateway.sh` (see `bench/README.md`); do not edit the numbers by hand. "
      f"Run from {stamp(env.get('STARTED'))} to {stamp(env.get('FINISHED'))}, with the repository at commit "
      f"`{env.get('GIT_COMMIT', '?')}` (what the measured binary was built from is under *Machine and set-up*).")
    w("")
    w("### What is measured")
    w("")
    w("Requests per second and latency of `palisade gateway` as a TLS reverse proxy, with every default "
      "layer on (strict request checks and the framing watch, security headers and cookie flags, client "
      "address, security.txt, limits and timeouts, forwarding headers), against Debian's nginx configured "
      "as a plain TLS reverse proxy, both in front of the same upstream on the same machine. The upstream is a "
      "second nginx serving two static files over plain HTTP on loopback; *direct* is wrk talking to it "
      "without TLS or a proxy, the ceiling both proxies are measured against. wrk keeps its connections "
      "open (keep-alive), so TLS handshakes are a negligible part of the work; what is measured is "
      "TLS record encryption, HTTP parsing and proxying each request over a pooled upstream connection.")
    w("")
    w("- Paths: " + PATH_LABEL["html"] + f", {env.get('HTML_BYTES', '?')} B of HTML with an inline `<style>` and "
      "`<script>`, sent with a `Set-Cookie` (the gateway adds `Secure; HttpOnly; SameSite=Lax` to it); "
      + PATH_LABEL["json"] + f", {env.get('JSON_BYTES', '?')} B of `application/json`.")
    w(f"- Loaded runs: `wrk -t{threads} -c{conns} -d{dur} --latency URL` ({conns} keep-alive connections, as fast "
      "as the servers answer; this saturates the machine).")
    if light:
        w(f"- Light-load runs: `wrk -t1 -c{lconns} -d{ldur} --latency URL` ({lconns} connection{'s' if lconns != '1' else ''}, "
          "one request at a time: the latency a request sees without queueing).")
    w(f"- Before the rounds, one warm-up run of `wrk -t{threads} -c{conns} -d{warm}` per target and path, not counted. "
      "Then rounds: in each round every load, path and target once, the two proxies in alternating order "
      "(odd rounds gateway first, even rounds nginx first; direct first in both).")
    w("- A run is *disturbed* when processes other than the benchmark's (wrk, the upstream, the two proxies) used "
      "more than a quarter of a core on average during it. Before each run the script waits until the machine is "
      f"idle, and rounds are repeated until every load, path and target has {env.get('BENCH_ROUNDS', '3')} "
      f"undisturbed runs, or {env.get('BENCH_MAX_ROUNDS', '6')} rounds were run. The tables give the median of "
      "the undisturbed runs of each (with the lowest and highest value); a figure from disturbed runs only is "
      "marked so. Every run is listed under *All runs* below.")
    w("- Latencies are wrk's (from `--latency`); wrk is a closed loop, so under load the p99 is mostly the time "
      "a request waits behind the others on its connection and for a CPU.")
    w("- Proxy CPU per request: user + system CPU time of the proxy's processes during the run (from "
      "`/proc/PID/stat`; the gateway's one process with all its threads, or nginx's master and workers) "
      "divided by the requests wrk completed.")
    w("")
    w("### Machine and set-up")
    w("")
    mem = num(env.get("MEM_KB"))
    w(f"- CPU: {nproc} cores (`nproc`), {env.get('CPU_MODEL', '?')}; memory "
      f"{mem / 1024 / 1024:.1f} GiB; kernel `{env.get('KERNEL', '?')}` ({env.get('OS', '?')})." if mem else
      f"- CPU: {nproc} cores, {env.get('CPU_MODEL', '?')}.")
    w(f"- **Everything shares those {nproc} cores**: wrk, the upstream, and the proxy being measured (the other "
      "proxy sits idle). wrk alone needs a good part of a core, so the proxies get less than two; the numbers "
      "compare the two proxies under the same constraint, not what either would reach on a machine of its own. "
      "The machine is a VM on a shared host" + spread_note(agg) + ".")
    w(f"- palisade: `{env.get('PALISADE_VERSION', '?')}`, binary of {env.get('PALISADE_BUILT', '?')} "
      f"(sha256 {env.get('PALISADE_SHA256', '?')}…): {env.get('PALISADE_SOURCE', 'source not recorded')}; run as "
      f"`{env.get('GATEWAY_CMD', 'palisade gateway ...')}` from an empty folder (no config file: every "
      f"default), certificate made by `palisade gateway cert self-signed --host localhost` (ECDSA P-256). "
      f"tokio's multithreaded runtime, one worker thread per core ({nproc}); "
      f"{env.get('GATEWAY_THREADS', '?')} threads in the process at the end.")
    w(f"- nginx: `{env.get('NGINX_VERSION', '?')}` (Debian package `{env.get('NGINX_PACKAGE', '?')}`), "
      f"`worker_processes auto` ({env.get('NGINX_WORKERS', '?')} workers), the same certificate and key, "
      "`ssl_protocols TLSv1.2 TLSv1.3` with the ECDHE-ECDSA AES-GCM and ChaCha20 suites, an `upstream` block with "
      "`keepalive 64` and `proxy_http_version 1.1`, `Host`, `X-Forwarded-For`, `-Proto` and `-Host` set, "
      "access log off, `keepalive_requests` raised so that no connection is closed during a run "
      "(the configuration is kept as `BENCH_DIR/gateway/nginx-proxy.conf`).")
    w(f"- Upstream: the same nginx, {env.get('UPSTREAM_WORKERS', '1')} worker, static files with `sendfile` and "
      "`open_file_cache`, access log off.")
    w(f"- wrk: `{env.get('WRK_VERSION', '?')}` (Debian), linked with {env.get('OPENSSL_VERSION', '?')}.")
    tg, tn = env.get("TLS_GATEWAY"), env.get("TLS_NGINX")
    if tg or tn:
        w(f"- Negotiated by OpenSSL's client (`openssl s_client`, as wrk uses it): gateway `{tg or '?'}`, "
          f"nginx `{tn or '?'}`.")
    if checks:
        parts = []
        for c in checks:
            parts.append((c["target"], c["path"], c["status"], c["body_identical"], c["header_bytes"], c["header_count"]))
        by = {(c["target"], c["path"]): c for c in checks}
        desc = []
        for p in PATHS:
            items = []
            for t in TARGETS:
                c = by.get((t, p))
                if c:
                    body = "" if c["body_identical"] == "yes" else f", body rewritten ({c['body_bytes']} B)"
                    items.append(f"{t} HTTP {c['status']}, {c['header_count']} header fields in {c['header_bytes']} B{body}")
            desc.append(f"{p}: " + "; ".join(items))
        w("- Responses checked once with curl before the runs (status line and headers kept as "
          "`BENCH_DIR/gateway/headers-PATH-TARGET.txt`): " + ". ".join(desc) + ". Bodies not noted as rewritten "
          "arrived byte for byte as the upstream sent them; the gateway's extra header bytes are its security "
          "headers.")
        hdr = os.path.join(results, "headers-html-gateway.txt")
        h = open(hdr, errors="replace").read().lower() if os.path.exists(hdr) else ""
        if rewrote_html(results):
            chunked = ", and sent the page chunked" if "transfer-encoding: chunked" in h else ""
            w("- The gateway rewrote the HTML page: it added a per-response nonce to the inline `<style>` and "
              f"`<script>` and a `Content-Security-Policy` naming it{chunked}. nginx passes the page through "
              "unchanged, so on the HTML path the gateway does work that nginx does not.")
    secs = num(env.get("BENCH_SECONDS"))
    if secs:
        waited = int(num(env.get("QUIET_WAITED")) or 0)
        w(f"- The whole run took {int(secs) // 60} min {int(secs) % 60:02d} s"
          + (f", of which {waited // 60} min {waited % 60:02d} s waiting for other work on the machine to stop" if waited else "")
          + f"; {len(rounds)} round{'s' if len(rounds) != 1 else ''}, {sum(1 for r in runs if disturbed(r))} of "
          f"{len(runs)} runs disturbed.")
    w("")
    w("Command (this run):")
    w("")
    w("```sh")
    w(command(env))
    w("```")
    w("")
    if env.get("PALISADE_BIN_GIVEN"):
        w("Without `PALISADE_BIN` the script first builds the working tree "
          "(`cargo build --release -p palisade`) and measures that.")
        w("")

    def table(load, title):
        w(title)
        w("")
        w("| path | target | req/s | p50 | p99 | p99 added over direct | proxy CPU per request | non-2xx / socket errors |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for p in PATHS:
            d = agg.get((load, p, "direct"))
            for t in TARGETS:
                a = agg.get((load, p, t))
                if not a:
                    continue
                rng = f" ({fmt_rps(a['rps_min'])}–{fmt_rps(a['rps_max'])})" if a["n"] > 1 else ""
                prng = f" ({fmt_ms(a['p99_min'])}–{fmt_ms(a['p99_max'])})" if a["n"] > 1 else ""
                added = "–" if t == "direct" or not d or a["p99"] is None or d["p99"] is None \
                    else fmt_delta_ms(a["p99"] - d["p99"])
                cpu = "–" if a["cpu_us"] is None else f"{a['cpu_us']:.0f} µs"
                errs = f"{a['non2xx']:,} / " + (", ".join(a["sock"]) if a["sock"] else "0")
                mark = " (disturbed)" if a["all_disturbed"] else ""
                w(f"| {PATH_LABEL[p]} | {TARGET_LABEL[t]} | {fmt_rps(a['rps'])}{rng}{mark} | {fmt_ms(a['p50'])} | "
                  f"{fmt_ms(a['p99'])}{prng} | {added} | {cpu} | {errs} |")
        w("")

    table("loaded", f"### Results under load (`-t{threads} -c{conns}`)")
    if light:
        table("light", f"### Results at light load (`-t1 -c{lconns}`)")
    w("Socket errors are wrk's `connect/read/write/timeout` counts; `0` means wrk reported none. "
      "Non-2xx counts every response wrk saw with a status of 400 or more (wrk's "
      "\"Non-2xx or 3xx responses\" line), over all rounds.")
    w("")

    w("### Peak memory")
    w("")
    w("| process | peak RSS (VmHWM) at the end of all runs |")
    w("| --- | --- |")
    w(f"| palisade gateway (one process) | {fmt_kib(env.get('GATEWAY_HWM_KB'))} |")
    nw = env.get("NGINX_WORKERS", "?")
    w(f"| nginx proxy, {nw} workers together | {fmt_kib(env.get('NGINX_WORKERS_HWM_KB'))} "
      f"(master: {fmt_kib(env.get('NGINX_MASTER_HWM_KB'))}) |")
    w("")

    # --- server logs
    w("### Server logs")
    w("")
    for name, f, label in (("gateway", "gateway-gateway.log", "palisade gateway (stderr)"),
                           ("nginx", "proxy-error.log", "nginx proxy (error log)"),
                           ("upstream", "upstream-error.log", "upstream nginx (error log)")):
        w(f"- {label}: " + log_summary(os.path.join(results, "logs", f)))
    w("")

    # --- target
    w("### Target")
    w("")
    w("*The gateway with all layers on at least matches nginx's throughput and adds under 1 ms to p99.* "
      "Throughput is compared under load; \"adds to p99\" is the gateway's p99 minus the direct p99 of the same "
      "path and load (what putting the gateway in front of the application costs), judged at both loads.")
    w("")
    w("| target | measured | result |")
    w("| --- | --- | --- |")
    passes = []
    for p in PATHS:
        g, n = agg.get(("loaded", p, "gateway")), agg.get(("loaded", p, "nginx"))
        if g and n and g["rps"] and n["rps"]:
            ok = g["rps"] >= n["rps"]
            passes.append(ok)
            w(f"| throughput, gateway ≥ nginx ({p}) | {fmt_rps(g['rps'])} vs {fmt_rps(n['rps'])} req/s "
              f"= {g['rps'] / n['rps']:.2f} | {verdict(ok)} |")
        else:
            w(f"| throughput, gateway ≥ nginx ({p}) | – | {verdict(None)} |")
    for load in LOADS:
        for p in PATHS:
            g, d = agg.get((load, p, "gateway")), agg.get((load, p, "direct"))
            if not g and not d:
                continue
            label = "under load" if load == "loaded" else "light load"
            if g and d and g["p99"] is not None and d["p99"] is not None:
                delta = g["p99"] - d["p99"]
                ok = delta < 1.0
                passes.append(ok)
                w(f"| p99 added < 1 ms ({p}, {label}) | {fmt_ms(g['p99'])} − {fmt_ms(d['p99'])} = "
                  f"{fmt_delta_ms(delta)} | {verdict(ok)} |")
            else:
                w(f"| p99 added < 1 ms ({p}, {label}) | – | {verdict(None)} |")
    errors = [(k, a) for k, a in agg.items() if k[2] == "gateway" and (a["non2xx"] or a["sock"] or a["bad"])]
    clean = not errors
    w(f"| no errors from the gateway (non-2xx, socket errors, exits) | "
      f"{'none in ' + format(sum(a['requests'] for k, a in agg.items() if k[2] == 'gateway'), ',') + ' requests' if clean else '; '.join(sorted({b['status'] for _, a in errors for b in a['bad']}))} "
      f"| {verdict(clean)} |")
    w("")

    # --- reading
    w("### Reading")
    w("")
    w(reading(agg, rewrote_html(results), int(conns) if conns.isdigit() else None))
    w("")

    # --- all runs
    w("### All runs")
    w("")
    w("proxy / upstream / wrk CPU = user + system seconds of those processes during the run; others = CPU seconds "
      "used by every other process on the machine meanwhile (busy time from `/proc/stat` minus the benchmark's "
      "processes); steal = CPU time the hypervisor took from this VM; load = 1-minute load average at the start.")
    w("")
    w("| round | load | path | target | req/s | p50 | p90 | p99 | max | requests | proxy CPU s | upstream CPU s | wrk CPU s | others s | steal s | load | status |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        other = "" if r["other"] is None else f"{r['other']:.2f}" + (" (disturbed)" if disturbed(r) else "")
        w(f"| {r['round']} | {r['load']} | {r['path']} | {r['target']} | {fmt_rps(r['rps'])} | {fmt_ms(r['p50'])} | "
          f"{fmt_ms(r['p90'])} | {fmt_ms(r['p99'])} | {fmt_ms(r['max'])} | "
          f"{'' if r['requests'] is None else format(r['requests'], ',')} | "
          f"{'' if r['proxy_cpu'] is None else format(r['proxy_cpu'], '.2f')} | "
          f"{'' if r['upstream_cpu'] is None else format(r['upstream_cpu'], '.2f')} | "
          f"{'' if r['wrk_cpu'] is None else format(r['wrk_cpu'], '.2f')} | {other} | "
          f"{'' if r['steal'] is None else format(r['steal'], '.2f')} | "
          f"{'' if r['load1'] is None else format(r['load1'], '.2f')} | {r['status']} |")
    w("")
    return "\n".join(L).rstrip("\n") + "\n"


def rewrote_html(results):
    """Whether the gateway's HTML answer carried a CSP nonce, i.e. the gateway rewrote the page."""
    hdr = os.path.join(results, "headers-html-gateway.txt")
    return os.path.exists(hdr) and "'nonce-" in open(hdr, errors="replace").read().lower()


def reading(agg, rewrote, connections=None):
    """Plain sentences from the medians: how the gateway compares, and why, from the CPU figures."""
    out = []
    for p in PATHS:
        g, n, d = (agg.get(("loaded", p, t)) for t in ("gateway", "nginx", "direct"))
        if not (g and n and g["rps"] and n["rps"]):
            continue
        ratio = g["rps"] / n["rps"]
        if ratio >= 1.0:
            rel = f"{(ratio - 1) * 100:.0f} % more requests per second than nginx"
        else:
            rel = f"{(1 - ratio) * 100:.0f} % fewer requests per second than nginx"
        s = f"**{p.upper()}**: under load the gateway answered {fmt_rps(g['rps'])} req/s, {rel} ({fmt_rps(n['rps'])})"
        if d and d["rps"]:
            s += f"; the upstream alone, without TLS, did {fmt_rps(d['rps'])}"
        s += "."
        if g["cpu_us"] and n["cpu_us"]:
            s += (f" Per request the gateway used {g['cpu_us']:.0f} µs of CPU and nginx {n['cpu_us']:.0f} µs "
                  f"({g['cpu_us'] / n['cpu_us']:.2f}×)")
            s += ": on cores shared with wrk and the upstream, CPU per request is what decides the throughput." \
                if abs(g["cpu_us"] / n["cpu_us"] - 1) > 0.1 else "."
        gl, dl, nl = (agg.get(("light", p, t)) for t in ("gateway", "direct", "nginx"))
        if gl and dl and gl["p99"] is not None and dl["p99"] is not None:
            s += (f" One request at a time, the gateway's p99 was {fmt_ms(gl['p99'])} against {fmt_ms(dl['p99'])} "
                  f"direct ({fmt_delta_ms(gl['p99'] - dl['p99'])})")
            if nl and nl["p99"] is not None:
                s += f" and nginx's {fmt_ms(nl['p99'])} ({fmt_delta_ms(nl['p99'] - dl['p99'])})"
            s += "."
        lim = agg.get(("loaded", p, "gateway-limit"))
        if lim and lim["rps"]:
            s += (f" With a rate limit covering the path (in process, never refusing), it answered "
                  f"{fmt_rps(lim['rps'])} req/s ({(lim['rps'] / g['rps'] - 1) * 100:+.1f} %)")
            if lim["cpu_us"] and g["cpu_us"]:
                s += f", {lim['cpu_us'] - g['cpu_us']:+.0f} µs of CPU per request"
            s += "."
        r = agg.get(("loaded", p, "gateway-rules"))
        if r and r["rps"]:
            s += (f" With input validation and a rate limit on the path as well, it answered {fmt_rps(r['rps'])} "
                  f"req/s ({(r['rps'] / g['rps'] - 1) * 100:+.1f} %)")
            if r["cpu_us"] and g["cpu_us"]:
                s += f", {r['cpu_us'] - g['cpu_us']:+.0f} µs of CPU per request"
            s += "."
            x = agg.get(("loaded", p, "gateway-redis"))
            if x and x["rps"]:
                s += (f" With that rate limit kept in Redis (one Lua call per request), {fmt_rps(x['rps'])} req/s "
                      f"({(x['rps'] / r['rps'] - 1) * 100:+.1f} % against the limit in process)")
                if x["cpu_us"] and r["cpu_us"]:
                    s += f", {x['cpu_us'] - r['cpu_us']:+.0f} µs of CPU per request, Redis's included"
                xl, rl = agg.get(("light", p, "gateway-redis")), agg.get(("light", p, "gateway-rules"))
                if xl and rl and xl["p99"] is not None and rl["p99"] is not None:
                    s += f"; one request at a time its p99 moved {fmt_delta_ms(xl['p99'] - rl['p99'])}"
                s += "."
        out.append(s)
    gh, gj = agg.get(("loaded", "html", "gateway")), agg.get(("loaded", "json", "gateway"))
    nh, nj = agg.get(("loaded", "html", "nginx")), agg.get(("loaded", "json", "nginx"))
    if rewrote and gh and gj and nh and nj and all(a["cpu_us"] for a in (gh, gj, nh, nj)):
        out.append(
            f"The gateway rewrites the HTML page (CSP nonces) and not the JSON answer: its CPU per request is "
            f"{gh['cpu_us']:.0f} µs on HTML against {gj['cpu_us']:.0f} µs on JSON, so the rewrite costs about "
            f"{gh['cpu_us'] - gj['cpu_us']:.0f} µs per page (nginx: {nh['cpu_us']:.0f} and {nj['cpu_us']:.0f} µs, "
            f"passing both through unchanged). Even without the rewrite, on JSON, the gateway uses "
            f"{gj['cpu_us'] / nj['cpu_us']:.1f}× nginx's CPU per request.")
    if connections:
        little = []
        for p in PATHS:
            g, n = agg.get(("loaded", p, "gateway")), agg.get(("loaded", p, "nginx"))
            if g and n and g["rps"] and n["rps"]:
                little.append(f"{p}: {connections / g['rps'] * 1000:.2f} ms for the gateway, "
                              f"{connections / n['rps'] * 1000:.2f} ms for nginx")
        light = [(p, agg.get(("light", p, "gateway")), agg.get(("light", p, "direct"))) for p in PATHS]
        light = [(p, g["p99"] - d["p99"]) for p, g, d in light if g and d and g["p99"] is not None and d["p99"] is not None]
        if little:
            s = (f"Under load the latency follows from the throughput: with {connections} connections always "
                 f"waiting for an answer, the mean latency is {connections} / (req/s) (Little's law), "
                 + "; ".join(little) + ". A proxy that needs more CPU per request on cores it shares with its "
                 "clients answers fewer requests and each one waits longer, so under load the p99 goal fails "
                 "mostly for the same reason as the throughput goal.")
            if light:
                s += (" One request at a time, with no queue, the gateway adds "
                      + " and ".join(f"{fmt_delta_ms(v).lstrip('+')} ({p})" for p, v in light)
                      + " to the direct p99.")
            out.append(s)
        out.append("The gateway, nginx and the upstream all share the 2 cores with wrk, so the absolute numbers are "
                   "this machine's; the ratio of CPU per request is the figure least tied to it.")
    verdicts = []
    tp = [agg.get(("loaded", p, "gateway")) and agg.get(("loaded", p, "nginx")) and
          agg[("loaded", p, "gateway")]["rps"] >= agg[("loaded", p, "nginx")]["rps"] for p in PATHS]
    lat = []
    for load in LOADS:
        for p in PATHS:
            g, d = agg.get((load, p, "gateway")), agg.get((load, p, "direct"))
            if g and d and g["p99"] is not None and d["p99"] is not None:
                lat.append((load, p, g["p99"] - d["p99"] < 1.0))
    if tp and lat:
        tp_ok, lat_ok = all(tp), all(ok for _, _, ok in lat)
        if tp_ok and lat_ok:
            verdicts.append("The target is met on both paths.")
        else:
            miss = []
            if not tp_ok:
                miss.append("throughput (" + ", ".join(p for p, ok in zip(PATHS, tp) if not ok) + ")")
            if not lat_ok:
                miss.append("p99 (" + ", ".join(f"{p} {'under load' if l == 'loaded' else 'light load'}"
                                                   for l, p, ok in lat if not ok) + ")")
            verdicts.append("**The target is not met**: " + " and ".join(miss) + " miss it, on this machine.")
    return "\n\n".join(verdicts + out)


def log_summary(path):
    """How many lines the log has and its distinct messages (at most five), with their counts."""
    if not os.path.exists(path):
        return "no log kept"
    with open(path, errors="replace") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    if not lines:
        return "empty"
    counts = {}
    for l in lines:
        counts[l] = counts.get(l, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    shown = "; ".join(f"`{l[:160]}`" + (f" ×{n:,}" if n > 1 else "") for l, n in top)
    more = f" and {len(counts) - len(top)} other distinct lines" if len(counts) > len(top) else ""
    return f"{len(lines):,} line{'s' if len(lines) != 1 else ''}: {shown}{more}"


def tsv_rounds(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    out.append((int(parts[0]), parts[1] == "1"))
    return out


def splice(path, text):
    """Replaces the section in PATH (from its heading to the next '## ' heading) or appends it."""
    old = open(path).read() if os.path.exists(path) else ""
    lines = old.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == HEADING), None)
    if start is None:
        head = old.rstrip("\n")
        new = (head + "\n\n" if head else "") + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before = "\n".join(lines[:start]).rstrip("\n")
        after = "\n".join(lines[end:]).strip("\n")
        new = (before + "\n\n" if before else "") + text + ("\n" + after + "\n" if after else "")
    with open(path, "w") as f:
        f.write(new)


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    text = section(sys.argv[1])
    sys.stdout.write(text)
    if len(sys.argv) == 3:
        splice(sys.argv[2], text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
