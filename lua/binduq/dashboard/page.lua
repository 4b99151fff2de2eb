-- The dashboard's page (binduq.dashboard): {{csrf}}, {{read_only}}, {{storage}} and
-- {{version}} are filled in by the server (hex digits, 0/1 and a version number: nothing
-- that needs escaping). The page holds no data and no inline script: app.js builds the rest.
-- Its URLs are relative, so that it works at / (binduq-lua dashboard) and under /dashboard/
-- (the `dashboard` option of a gateway or worker) alike.
return [==[<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="bq-csrf" content="{{csrf}}">
<meta name="bq-read-only" content="{{read_only}}">
<meta name="bq-storage" content="{{storage}}">
<title>binduq dashboard</title>
<link rel="stylesheet" href="app.css">
</head>
<body>
<header>
  <span class="brand">binduq</span>
  <nav>
    <a href="#/overview" data-page="overview">Overview</a>
    <a href="#/workers" data-page="workers">Workers</a>
    <a href="#/dead" data-page="dead">Dead letters</a>
    <a href="#/tasks" data-page="tasks">Tasks</a>
    <a href="#/scheduled" data-page="scheduled">Scheduled</a>
  </nav>
  <span id="live" class="live" title="live updates">connecting</span>
</header>
<main id="main" aria-live="polite"></main>
<div id="toast" role="status"></div>
<footer>binduq {{version}}</footer>
<script src="app.js"></script>
</body>
</html>
]==]
