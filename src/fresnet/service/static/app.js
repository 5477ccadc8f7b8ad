// The fresnet web page: drop a photo, see each face's box and landmarks, its best matches, and
// enrol a face under a name. Plain JavaScript over the /v1 API; nothing is sent anywhere else.
"use strict";
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
const $ = (id) => document.getElementById(id);
let photo = null;   // the File shown
let image = null;   // its decoded <img>

function headers() {
  const key = $("api-key").value;
  return key ? { "X-API-Key": key } : {};
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function call(method, path, body) {
  const response = await fetch(path, { method, body, headers: headers() });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = (data && data.error) || { code: String(response.status), message: response.statusText };
    throw new Error(`${error.code}: ${error.message}`);
  }
  return data;
}

async function start() {
  const health = await call("GET", "/v1/health");
  $("key-label").hidden = !health.api_key_required;
  for (const name of health.galleries) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("gallery").appendChild(option);
  }
  status(`model ${health.model.model_digest.slice(0, 19)}…, ${health.galleries.length} galleries`);
}

function draw(faces) {
  const canvas = $("canvas");
  const scale = Math.min(1280 / image.naturalWidth, Math.max(1, 640 / image.naturalWidth));
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const line = Math.max(2, canvas.width / 320);
  faces.forEach((face, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const [x1, y1, x2, y2] = face.box.map((v) => v * scale);
    ctx.strokeStyle = ctx.fillStyle = colour;
    ctx.lineWidth = line;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    for (const [x, y] of face.landmarks || []) {
      ctx.beginPath();
      ctx.arc(x * scale, y * scale, line * 1.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.font = `${Math.max(14, line * 8)}px system-ui`;
    const best = face.matches && face.matches[0];
    ctx.fillText(`${i + 1}${best ? " " + best.name : ""}`, x1, Math.max(y1 - line * 2, 14));
  });
}

function faceCard(face, i) {
  const card = document.createElement("article");
  card.className = "face";
  card.style.setProperty("--colour", COLOURS[i % COLOURS.length]);
  const title = document.createElement("h2");
  title.textContent = `Face ${i + 1}`;
  card.appendChild(title);
  if (face.matches.length) {
    const list = document.createElement("ol");
    for (const match of face.matches) {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "match-name";
      name.textContent = match.name;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = ` ${match.score.toFixed(3)}`;
      item.append(name, score);
      list.appendChild(item);
    }
    card.appendChild(list);
  } else {
    const none = document.createElement("p");
    none.className = "none";
    none.textContent = "no match";
    card.appendChild(none);
  }
  const form = document.createElement("form");
  form.className = "enrol";
  const input = document.createElement("input");
  input.placeholder = "name";
  input.required = true;
  input.maxLength = 128;
  input.setAttribute("aria-label", `name for face ${i + 1}`);
  const button = document.createElement("button");
  button.textContent = "enrol";
  form.append(input, button);
  form.addEventListener("submit", (event) => { event.preventDefault(); enrol(face, input.value); });
  card.appendChild(form);
  return card;
}

async function faceCrop(face) {
  // the face with a margin, so the service's "largest face of the photo" is this one
  const [x1, y1, x2, y2] = face.box;
  const margin = 0.6 * Math.max(x2 - x1, y2 - y1);
  const left = Math.max(0, x1 - margin), top = Math.max(0, y1 - margin);
  const right = Math.min(image.naturalWidth, x2 + margin), bottom = Math.min(image.naturalHeight, y2 + margin);
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(right - left);
  canvas.height = Math.round(bottom - top);
  canvas.getContext("2d").drawImage(image, left, top, right - left, bottom - top, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.95));
}

async function enrol(face, name) {
  try {
    const body = new FormData();
    body.append("name", name);
    body.append("photos", await faceCrop(face), "face.jpg");
    const gallery = encodeURIComponent($("gallery").value);
    const answer = await call("POST", `/v1/galleries/${gallery}/identities`, body);
    status(`enrolled ${answer.name}`);
    await search();
  } catch (error) {
    status(error.message, true);
  }
}

async function search() {
  const body = new FormData();
  body.append("photo", photo);
  body.append("limit", "3");
  const gallery = encodeURIComponent($("gallery").value);
  status("searching…");
  const answer = await call("POST", `/v1/galleries/${gallery}/search`, body);
  draw(answer.faces);
  const results = $("results");
  results.replaceChildren(...answer.faces.map(faceCard));
  if (!answer.faces.length) results.textContent = "No face found in this photo.";
  status(`${answer.faces.length} face(s)` +
         (answer.threshold != null ? `, threshold ${answer.threshold.toFixed(3)}` : ""));
  document.body.dataset.state = "searched";
}

async function show(file) {
  photo = file;
  image = new Image();
  image.src = URL.createObjectURL(file);
  await image.decode();
  try {
    await search();
  } catch (error) {
    status(error.message, true);
    document.body.dataset.state = "error";
  }
}

$("file").addEventListener("change", (event) => event.target.files[0] && show(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) show(event.dataTransfer.files[0]);
});
$("gallery").addEventListener("change", () => photo && search());
start().catch((error) => status(error.message, true));
