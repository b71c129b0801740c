// Numbers and times for people.

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.floor(seconds % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

export function clock(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function dateTime(epoch) {
  if (!epoch) return "";
  return new Date(epoch * 1000).toISOString().replace("T", " ").replace("Z", " UTC");
}

export function exitText(row) {
  if (row.state === "failed") {
    return row.exit_code !== null && row.exit_code !== undefined ? `${row.error} (${row.exit_code})` : `${row.error}`;
  }
  if (row.exit_code === null || row.exit_code === undefined) return "";
  let text = String(row.exit_code);
  if (row.signal) text += ` ${row.signal}`;
  if (row.timed_out) text += " timed out";
  return text;
}

export function argv(cmd, more) {
  if (!cmd) return "";
  const quoted = cmd.map((arg) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`));
  return quoted.join(" ") + (more ? " …" : "");
}

export function labels(map) {
  return Object.entries(map || {}).map(([k, v]) => `${k}=${v}`).join(" ");
}
