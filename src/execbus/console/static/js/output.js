// Exec output: styled segments [stream, text, style] from the server, as spans with textContent.
import { el } from "./dom.js";

const MAX_SPANS = 5000;
const HEX = /^#[0-9a-f]{6}$/;

function span(segment) {
  const [stream, text, style] = segment;
  const node = el("span", { text });
  const classes = stream === "stderr" ? ["stderr"] : [];
  if (style) {
    for (const [key, value] of Object.entries(style)) {
      if (key === "fg" || key === "bg") {
        if (Number.isInteger(value) && value >= 0 && value < 16) classes.push(`${key}${value}`);
        else if (typeof value === "string" && HEX.test(value)) {
          if (key === "fg") node.style.color = value;
          else node.style.backgroundColor = value;
        }
      } else if (["b", "d", "i", "u", "r", "s"].includes(key) && value === true) {
        classes.push(`sgr-${key}`);
      }
    }
  }
  if (classes.length) node.className = classes.join(" ");
  return node;
}

export function renderOutput(pre, output) {
  if (output.reset) pre.replaceChildren();
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const fragment = document.createDocumentFragment();
  for (const segment of output.segments) fragment.appendChild(span(segment));
  pre.appendChild(fragment);
  while (pre.childNodes.length > MAX_SPANS) pre.removeChild(pre.firstChild);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}
