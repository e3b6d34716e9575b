<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
% if refresh:
<meta http-equiv="refresh" content="{{refresh}}">
% end
<title>{{title}} · Poel</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { background: #243447; color: #fff; padding: .5rem 1rem; display: flex; gap: 1rem; align-items: center; }
header a { color: #fff; text-decoration: none; } header a.here { text-decoration: underline; }
header .who { margin-left: auto; }
main { padding: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: .5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; max-width: 100ch; }
.state-failed { color: #b00; } .state-succeeded { color: #070; } .state-running { color: #05a; }
.note { color: #666; } form.inline { display: inline; }
.banner { background: #fff4d6; border-bottom: 1px solid #e0c060; margin: 0; padding: .4rem 1rem; }
.graph { overflow: auto; max-width: 100%; max-height: 80vh; border: 1px solid #eee; }
.chart rect.ok { fill: #5a5; } .chart rect.bad { fill: #c44; }
</style>
</head>
<body>
<header>
<strong>Poel</strong>
% if session or not writable:
% for path, label in (("/", "Overview"), ("/jobs", "Jobs"), ("/workflows", "Workflows"), ("/running", "Running"), ("/schedules", "Schedules"), ("/steering", "Steering"), ("/workers", "Workers"), ("/audit", "Audit")):
<a href="{{root}}{{path}}" class="{{'here' if title == label else ''}}">{{label}}</a>
% end
% end
<span class="who">
% if session:
{{session.actor}} <form class="inline" method="post" action="{{root}}/signout" id="signout"><input type="hidden" name="csrf" value="{{csrf}}"><button>sign out</button></form>
% elif writable:
<a href="{{root}}/signin">sign in</a>
% else:
read-only
% end
</span>
</header>
% if not writable:
<p id="open" class="banner">Read-only, and open to whoever can reach it: no <code>POEL_DASHBOARD_TOKEN</code> is set, so nobody signs in and nothing can be changed. It listens on loopback unless told otherwise; set the token before exposing it.</p>
% end
<main>
<h1>{{title}}</h1>
{{!base}}
</main>
</body>
</html>
