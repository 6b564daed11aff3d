"""Hand-written OpenOrca-style samples for the demo dataset.

Each is (id, system prompt, question, reference answer). The answers run to several sentences and
use abbreviations such as "e.g." and "Dr." so that the evaluator's sentence splitter (rougeLsum)
has real work to do.
"""

from __future__ import annotations

from typing import NamedTuple


class OrcaSample(NamedTuple):
    id: str
    system_prompt: str
    question: str
    answer: str


_HELPFUL = "You are a helpful assistant. Answer briefly and accurately."
_EXPLAIN = "You are an AI assistant that explains its answers. Keep the explanation short."
_CHILD = "You are a patient teacher. Explain the answer so that a child can follow it."

ORCA_SAMPLES: tuple[OrcaSample, ...] = (
    OrcaSample("demo.orca.0", _HELPFUL, "What is the capital of France?",
               "The capital of France is Paris. It is also the largest city in the country."),
    OrcaSample("demo.orca.1", _EXPLAIN, "Why do leaves change colour in autumn?",
               "Leaves change colour because trees stop making chlorophyll in autumn. "
               "Other pigments, e.g. carotenoids, then become visible. That is why leaves turn yellow and red."),
    OrcaSample("demo.orca.2", _HELPFUL, "Translate to German: Good morning, how are you?",
               "Guten Morgen, wie geht es dir?"),
    OrcaSample("demo.orca.3", _CHILD, "Why is the sky blue?",
               "Sunlight is made of many colours. The air scatters blue light more than red light. "
               "So when you look up, you see blue light coming from all over the sky."),
    OrcaSample("demo.orca.4", _EXPLAIN, "Who was Dr. Martin Luther King Jr.?",
               "Dr. Martin Luther King Jr. was an American minister and civil rights leader. "
               "He gave the famous \"I Have a Dream\" speech in 1963. He won the Nobel Peace Prize in 1964."),
    OrcaSample("demo.orca.5", _HELPFUL, "Summarize: The city council voted on Tuesday to build a new park "
               "near the river. Work will start in May and should end next year.",
               "The city council approved a new park by the river. Construction starts in May. "
               "It should be finished next year."),
    OrcaSample("demo.orca.6", _EXPLAIN, "Is a tomato a fruit or a vegetable?",
               "Botanically, a tomato is a fruit because it grows from a flower and contains seeds. "
               "In cooking it is treated as a vegetable, e.g. in salads and sauces."),
    OrcaSample("demo.orca.7", _HELPFUL, "Name three primary colours.",
               "The three primary colours of paint are red, yellow and blue. "
               "Light uses red, green and blue instead."),
    OrcaSample("demo.orca.8", _CHILD, "What does a bee do all day?",
               "A bee flies from flower to flower to collect nectar and pollen. "
               "It brings them back to the hive to make honey. While it works, it helps plants make seeds."),
    OrcaSample("demo.orca.9", _EXPLAIN, "Premise: A man is playing a guitar on stage. "
               "Hypothesis: A man is performing music. Does the premise entail the hypothesis?",
               "Yes. Playing a guitar on stage is a way of performing music. So the premise entails the hypothesis."),
    OrcaSample("demo.orca.10", _HELPFUL, "What is the boiling point of water at sea level?",
               "Water boils at 100 degrees Celsius at sea level. That is 212 degrees Fahrenheit. "
               "At higher altitudes, e.g. in the mountains, it boils at a lower temperature."),
    OrcaSample("demo.orca.11", _EXPLAIN, "Write a sentence that uses the word \"reluctant\".",
               "Dr. Smith was reluctant to leave the lab before the experiment ended. "
               "The word means unwilling or hesitant."),
)
