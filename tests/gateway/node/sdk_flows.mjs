// The gateway from Node's official `openai` package: chat completion, streaming, files + batches.
// Run by tests/gateway/test_node_sdk.py with BASE_URL and API_KEY; prints one JSON report.
import OpenAI, { toFile } from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 120000 });
const question = "Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Mercury\nAnswer with one letter.";
const report = {};

const completion = await client.chat.completions.create({
  model: "panel/multiple_choice",
  messages: [{ role: "user", content: question }],
});
report.chat = { id: completion.id, content: completion.choices[0].message.content, usage: completion.usage,
  receipt_job: completion.panel?.receipt?.job_id };

const stream = await client.chat.completions.create({
  model: "panel/multiple_choice", messages: [{ role: "user", content: question }], stream: true,
  stream_options: { include_usage: true },
});
let text = "", id = null, usage = null;
for await (const chunk of stream) {
  id = chunk.id;
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
report.stream = { id, content: text, usage };

const lines = [0, 1, 2, 3, 4].map((n) => JSON.stringify({
  custom_id: `node-${n}`, method: "POST", url: "/v1/chat/completions",
  body: { model: "panel/multiple_choice", messages: [{ role: "user", content: question.replace("largest", `largest (node ${n})`) }] },
}));
const file = await client.files.create({ file: await toFile(Buffer.from(lines.join("\n") + "\n"), "node.jsonl"), purpose: "batch" });
let batch = await client.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" });
const end = Date.now() + 120000;
while (!["completed", "failed", "cancelled"].includes(batch.status) && Date.now() < end) {
  await new Promise((r) => setTimeout(r, 500));
  batch = await client.batches.retrieve(batch.id);
}
const output = batch.output_file_id ? await (await client.files.content(batch.output_file_id)).text() : "";
report.batch = { status: batch.status, counts: batch.request_counts,
  lines: output.split("\n").filter(Boolean).map((l) => JSON.parse(l)) };

try {
  await client.chat.completions.create({ model: "panel/multiple_choice", messages: [{ role: "tool", content: "x" }] });
  report.error = null;
} catch (e) {
  report.error = { status: e.status, param: e.param, type: e.type };
}
console.log(JSON.stringify(report));
